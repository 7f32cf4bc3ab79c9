"""The C paged-decode attention kernel (cpu_kernels/paged_decode.py, csrc/paged_decode.c).

Its outputs are checked against a dense float64 reference built with plain torch from each
sequence's keys/values and `reference_mask`, directly and through PortableAttentionBackend (where it
must also agree with the pure-torch decode path); then batch and thread-count invariance, the
fallbacks when it cannot be built, input validation, and an engine run (loading, building and falling back:
test_cpu_decode_kernel_loading.py).
Each for a float32 cache and a float16 one (query and output float32), whose reference is built
from the same float16 values upcast; and builds of the C file without half-precision support.
"""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
import torch
from fixtures_models import TinyModel
from paged_decode_helpers import (
    CACHE_DTYPES,
    CPU,
    NOISE_SCALE,
    SENTINEL,
    TOL,
    CountingKernel,
    PagedStep,
    decode_inputs,
    dense_reference,
    loaded_kernel,
    make_step,
    mixed_seqs,
    run_backend,
    skip_without_half,
    write_new_tokens,
)
from ziggurat_core.engine import InferenceEngine, SamplingParams
from ziggurat_core.engine.attention import torch_backend
from ziggurat_core.engine.attention.base import StepLayout
from ziggurat_core.engine.attention.torch_backend import PortableAttentionBackend
from ziggurat_core.engine.config import EngineConfig
from ziggurat_core.engine.cpu_kernels import (
    KernelError,
    PagedAttentionKernel,
    load_paged_attention_kernel,
)


@pytest.fixture(scope="module")
def kernel(cpu_kernels: None) -> PagedAttentionKernel:
    return loaded_kernel()


@pytest.fixture
def spy(kernel: PagedAttentionKernel, monkeypatch: pytest.MonkeyPatch) -> CountingKernel:
    """Backends created from now on get a counting wrapper around the real kernel."""
    counting = CountingKernel(kernel)
    monkeypatch.setattr(torch_backend, "load_paged_attention_kernel", lambda: counting)
    return counting


GROUPS = [1, 3, 4]
HEAD_DIMS = [64, 128, 80]  # the two specialised sizes and one on the generic path
BLOCK_SIZES = [1, 16, 32]


# ---- correctness ----


@pytest.mark.parametrize("cache_dtype", CACHE_DTYPES, ids=str)
@pytest.mark.parametrize("block_size", BLOCK_SIZES)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("group", GROUPS)
def test_kernel_matches_dense_reference_and_writes_only_decode_rows(
    kernel: PagedAttentionKernel, group: int, head_dim: int, block_size: int, cache_dtype: torch.dtype
) -> None:
    skip_without_half(kernel, cache_dtype)
    num_kv_heads = 2
    step = make_step(
        mixed_seqs(block_size),
        block_size=block_size,
        num_heads=num_kv_heads * group,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        cache_dtype=cache_dtype,
        seed=group * 1000 + head_dim + block_size,
    )
    write_new_tokens(step)
    assert step.kv_cache.dtype == cache_dtype
    tables, lens, rows = decode_inputs(step)
    scale = 1.0 / math.sqrt(head_dim)
    out = torch.full(step.query.shape, SENTINEL)

    kernel(step.query, step.kv_cache, tables, lens, rows, out, scale)

    expected = dense_reference(step, scale)
    torch.testing.assert_close(out[rows].double(), expected[rows], rtol=TOL, atol=TOL)
    others = torch.ones(step.layout.num_tokens, dtype=torch.bool)
    others[rows] = False
    assert others.sum() == 11  # the two prefills' rows
    assert torch.equal(out[others], torch.full_like(out[others], SENTINEL))


@pytest.mark.parametrize("cache_dtype", CACHE_DTYPES, ids=str)
@pytest.mark.parametrize("block_size", BLOCK_SIZES)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("group", GROUPS)
def test_backend_kernel_path_matches_torch_path_and_reference(
    spy: CountingKernel, group: int, head_dim: int, block_size: int, cache_dtype: torch.dtype
) -> None:
    skip_without_half(spy.inner, cache_dtype)
    num_kv_heads = 2
    step = make_step(
        mixed_seqs(block_size),
        block_size=block_size,
        num_heads=num_kv_heads * group,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        cache_dtype=cache_dtype,
        seed=group * 1000 + head_dim + block_size + 1,
    )
    scale = 1.0 / math.sqrt(head_dim)

    with_kernel, cache_with = run_backend(step, scale, decode_kernel=True)
    # One call for the step, covering every new token: prefill rows attend from the cache too.
    assert (spy.calls, spy.rows) == (1, step.layout.num_tokens)
    without, cache_without = run_backend(step, scale, decode_kernel=False)
    assert spy.calls == 1, "decode_kernel=False must not call the kernel"

    torch.testing.assert_close(with_kernel, without, rtol=TOL, atol=TOL)
    expected = dense_reference(step, scale)
    torch.testing.assert_close(with_kernel.double(), expected, rtol=TOL, atol=TOL)
    torch.testing.assert_close(without.double(), expected, rtol=TOL, atol=TOL)
    assert cache_with.dtype == cache_dtype
    assert torch.equal(cache_with, cache_without)
    # The new tokens are stored rounded to the cache dtype.
    slots = cache_with.view(2, -1, *cache_with.shape[3:])[:, step.layout.slot_mapping()]
    assert torch.equal(slots[0], step.new_keys.to(cache_dtype))
    assert torch.equal(slots[1], step.new_values.to(cache_dtype))


def test_decode_only_step_through_backend(spy: CountingKernel) -> None:
    """A step of decodes only, with a different scale; consecutive decode steps of one sequence."""
    bs, num_kv_heads, group, d = 16, 2, 3, 64
    seqs = [(5, 1), (40, 1), (15, 1), (0, 1)]
    step = make_step(
        seqs, block_size=bs, num_heads=num_kv_heads * group, num_kv_heads=2, head_dim=d
    )
    out, _ = run_backend(step, 0.37, decode_kernel=True)
    assert spy.calls == 1
    torch.testing.assert_close(out.double(), dense_reference(step, 0.37), rtol=TOL, atol=TOL)

    # One sequence decoding from its first token on, across block boundaries, one step at a time.
    bs, total = 4, 15
    gen = torch.Generator().manual_seed(4)
    keys = torch.randn(total, num_kv_heads, d, generator=gen)
    values = torch.randn(total, num_kv_heads, d, generator=gen)
    queries = torch.randn(total, num_kv_heads * group, d, generator=gen)
    cache = torch.randn(2, 7, bs, num_kv_heads, d, generator=gen) * NOISE_SCALE
    table = [5, 2, 6, 0]
    backend = PortableAttentionBackend()
    for pos in range(total):
        now = slice(pos, pos + 1)
        layout = StepLayout([1], [pos + 1], [table], bs)
        out = backend.forward(
            queries[now], keys[now], values[now], cache, backend.prepare(layout, CPU), 0.125
        )
        single = PagedStep(
            layout,
            cache,
            [keys[: pos + 1]],
            [values[: pos + 1]],
            queries[now],
            keys[now],
            values[now],
        )
        torch.testing.assert_close(out.double(), dense_reference(single, 0.125), rtol=TOL, atol=TOL)
    assert spy.calls == 1 + total


@pytest.mark.parametrize("cache_dtype", [torch.float16, torch.bfloat16], ids=str)
def test_narrow_cache_prompt_gives_the_same_output_whole_or_in_chunks(
    spy: CountingKernel, cache_dtype: torch.dtype
) -> None:
    """A prompt attended in one step (over its new keys/values) or in chunks (over the ones read
    back from the cache) sees the same values rounded to the cache dtype: the outputs agree to
    float32 rounding, far below the cache dtype's own precision."""
    bs, num_kv_heads, group, d, n, scale = 4, 2, 2, 64, 23, 0.125
    gen = torch.Generator().manual_seed(3)
    queries = torch.randn(n, num_kv_heads * group, d, generator=gen)
    keys = torch.randn(n, num_kv_heads, d, generator=gen)
    values = torch.randn(n, num_kv_heads, d, generator=gen)
    table = [5, 0, 3, 1, 6, 2]
    backend = PortableAttentionBackend()

    whole_layout = StepLayout([n], [n], [table], bs)
    whole_cache = torch.zeros(2, 8, bs, num_kv_heads, d, dtype=cache_dtype)
    whole = backend.forward(
        queries, keys, values, whole_cache, backend.prepare(whole_layout, CPU), scale
    )
    chunked_cache = torch.zeros_like(whole_cache)
    parts = []
    for start, end in [(0, 9), (9, 10), (10, n)]:  # a prefill, a decode, a prefill after a prefix
        layout = StepLayout([end - start], [end], [table], bs)
        now = slice(start, end)
        metadata = backend.prepare(layout, CPU)
        parts.append(
            backend.forward(queries[now], keys[now], values[now], chunked_cache, metadata, scale)
        )
    chunked = torch.cat(parts)

    assert torch.equal(whole_cache, chunked_cache)
    torch.testing.assert_close(chunked, whole, rtol=2e-6, atol=2e-6)
    rounded = PagedStep(
        whole_layout,
        whole_cache,
        [keys.to(cache_dtype).float()],
        [values.to(cache_dtype).float()],
        queries,
        keys,
        values,
    )
    torch.testing.assert_close(whole.double(), dense_reference(rounded, scale), rtol=TOL, atol=TOL)
    # Every step (the whole prompt, and each chunk) goes through the kernel where it reads the cache.
    assert spy.calls == (4 if cache_dtype in spy.cache_dtypes else 0)


# ---- invariance ----


def _thirty_two_decodes(seed: int, cache_dtype: torch.dtype = torch.float32) -> PagedStep:
    rng = random.Random(seed)
    seqs = [(rng.randint(0, 400), 1) for _ in range(32)]
    return make_step(
        seqs,
        block_size=16,
        num_heads=6,
        num_kv_heads=2,
        head_dim=64,
        cache_dtype=cache_dtype,
        seed=seed,
    )


@pytest.mark.parametrize("cache_dtype", CACHE_DTYPES, ids=str)
def test_sequence_output_is_bitwise_the_same_alone_or_in_a_batch_of_32(
    spy: CountingKernel, cache_dtype: torch.dtype
) -> None:
    skip_without_half(spy.inner, cache_dtype)
    step = _thirty_two_decodes(seed=21, cache_dtype=cache_dtype)
    scale = 0.125
    batched, _ = run_backend(step, scale, decode_kernel=True)
    torch.testing.assert_close(batched.double(), dense_reference(step, scale), rtol=TOL, atol=TOL)

    for i in range(32):
        layout = StepLayout([1], [step.layout.context_lens[i]], [step.layout.block_tables[i]], 16)
        alone = PagedStep(
            layout,
            step.kv_cache,
            [step.keys[i]],
            [step.values[i]],
            step.query[i : i + 1],
            step.new_keys[i : i + 1],
            step.new_values[i : i + 1],
        )
        out, _ = run_backend(alone, scale, decode_kernel=True)
        assert torch.equal(out[0], batched[i]), f"sequence {i} differs when decoded alone"
    assert spy.calls == 33


@pytest.mark.parametrize("cache_dtype", CACHE_DTYPES, ids=str)
def test_same_result_with_one_and_two_threads(
    kernel: PagedAttentionKernel, cache_dtype: torch.dtype
) -> None:
    skip_without_half(kernel, cache_dtype)
    step = _thirty_two_decodes(seed=5, cache_dtype=cache_dtype)
    write_new_tokens(step)
    tables, lens, rows = decode_inputs(step)
    results = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = torch.full(step.query.shape, SENTINEL)
            kernel(step.query, step.kv_cache, tables, lens, rows, out, 0.125)
            results.append(out)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(results[0], results[1])
    torch.testing.assert_close(
        results[0].double(), dense_reference(step, 0.125), rtol=TOL, atol=TOL
    )


# ---- input validation ----


def _valid_call_args(cache_dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    step = make_step(
        [(3, 1), (0, 2), (10, 1)],
        block_size=4,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        cache_dtype=cache_dtype,
    )
    write_new_tokens(step)
    tables, lens, rows = decode_inputs(step)
    return {
        "query": step.query,
        "kv_cache": step.kv_cache,
        "block_tables": tables,
        "context_lens": lens,
        "token_rows": rows,
        "out": torch.full(step.query.shape, SENTINEL),
        "scale": 0.5,
    }


@pytest.mark.parametrize(
    ("name", "change"),
    [
        ("query", lambda t: t.to(torch.bfloat16)),
        ("query", lambda t: t.to(torch.float16)),
        ("kv_cache", lambda t: t.to(torch.bfloat16)),
        ("kv_cache", lambda t: t.to(torch.float64)),
        ("out", lambda t: t.to(torch.float64)),
        ("out", lambda t: t.to(torch.float16)),
        ("query", lambda t: t.transpose(1, 2).contiguous().transpose(1, 2)),
        ("kv_cache", lambda t: t.transpose(0, 1).contiguous().transpose(0, 1)),
        ("block_tables", lambda t: t.to(torch.int32)),
        ("context_lens", lambda t: t.to(torch.int32)),
        ("token_rows", lambda t: t.to(torch.float32)),
        ("block_tables", lambda t: torch.stack([t, t], dim=-1)[..., 0]),
    ],
    ids=[
        "bf16-query",
        "f16-query",
        "bf16-cache",
        "f64-cache",
        "f64-out",
        "f16-out",
        "strided-query",
        "strided-cache",
        "int32-tables",
        "int32-lens",
        "float-rows",
        "strided-tables",
    ],
)
def test_kernel_refuses_wrong_dtype_or_layout(
    kernel: PagedAttentionKernel, name: str, change: Any
) -> None:
    args = _valid_call_args()
    changed = change(args[name])
    assert changed.shape == args[name].shape  # only the dtype or the strides differ
    assert changed.dtype != args[name].dtype or not changed.is_contiguous()
    args[name] = changed
    out_before = args["out"].clone()
    with pytest.raises(KernelError, match=name):
        kernel(**args)
    assert torch.equal(args["out"].double(), out_before.double())


@pytest.mark.parametrize("cache_dtype", CACHE_DTYPES, ids=str)
def test_valid_call_args_are_accepted(kernel: PagedAttentionKernel, cache_dtype: torch.dtype) -> None:
    """The baseline of the refusal cases above runs and writes the decode rows."""
    skip_without_half(kernel, cache_dtype)
    args = _valid_call_args(cache_dtype)
    kernel(**args)
    written = torch.zeros(args["out"].shape[0], dtype=torch.bool)
    written[args["token_rows"]] = True
    assert (args["out"][written] != SENTINEL).all()
    assert (args["out"][~written] == SENTINEL).all()


@pytest.mark.parametrize(
    ("dtype", "cache_dtype"),
    [
        (torch.bfloat16, torch.bfloat16),
        (torch.float64, torch.float64),
        (torch.float32, torch.bfloat16),
        (torch.float64, torch.float16),
        (torch.bfloat16, torch.float16),
    ],
    ids=["bf16", "f64", "f32-query-bf16-cache", "f64-query-f16-cache", "bf16-query-f16-cache"],
)
def test_backend_with_other_dtypes_uses_torch_path(
    spy: CountingKernel, dtype: torch.dtype, cache_dtype: torch.dtype
) -> None:
    """Query and cache dtypes the kernel does not take: the torch path, which computes in the
    query dtype over the cached values (the reference is built from the same rounded values)."""
    step = make_step(
        mixed_seqs(16),
        block_size=16,
        num_heads=6,
        num_kv_heads=2,
        head_dim=64,
        dtype=dtype,
        cache_dtype=cache_dtype,
    )
    out, cache = run_backend(step, 0.125, decode_kernel=True)
    assert spy.calls == 0
    assert out.dtype == dtype and cache.dtype == cache_dtype
    tol = {torch.bfloat16: 2e-2, torch.float32: TOL, torch.float64: 1e-9}[dtype]
    torch.testing.assert_close(out.double(), dense_reference(step, 0.125), rtol=tol, atol=tol)


# ---- engine ----


@pytest.mark.parametrize("kv_cache_dtype", ["float32", "float16"])
def test_engine_greedy_tokens_equal_with_kernel_on_and_off(
    tiny_llama: TinyModel,
    spy: CountingKernel,
    monkeypatch: pytest.MonkeyPatch,
    kv_cache_dtype: str,
) -> None:
    skip_without_half(spy.inner, getattr(torch, kv_cache_dtype))
    monkeypatch.delenv("ZIGGURAT_CPU_KERNELS", raising=False)
    rng = random.Random(8)
    vocab = tiny_llama.config.vocab_size
    prompts = [[rng.randrange(3, vocab) for _ in range(rng.randint(1, 30))] for _ in range(6)]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)

    def generate(decode_kernel: bool) -> list[list[int]]:
        config = EngineConfig(
            model=str(tiny_llama.gguf_path), block_size=4, kv_cache_dtype=kv_cache_dtype
        )
        engine = InferenceEngine(config)
        assert engine.runner.kv_cache_dtype == getattr(torch, kv_cache_dtype)
        attention = engine.runner.attention
        assert isinstance(attention, PortableAttentionBackend)
        attention.use_decode_kernel = decode_kernel
        for i, prompt in enumerate(prompts):
            engine.add_request(f"r{i}", prompt_token_ids=prompt, sampling_params=params)
        done = {o.request_id: o for o in engine.get_outputs() if o.finished}
        return [done[f"r{i}"].outputs[0].token_ids for i in range(len(prompts))]

    with_kernel = generate(True)
    calls = spy.calls
    assert calls > 0
    without = generate(False)
    assert spy.calls == calls
    assert all(len(tokens) == 24 for tokens in with_kernel)
    assert with_kernel == without


@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.float16])
def test_write_kv_stores_what_index_copy_would(cache_dtype: torch.dtype) -> None:
    kernel = load_paged_attention_kernel()
    if kernel is None or cache_dtype not in kernel.cache_dtypes:
        pytest.skip("no kernel for this cache dtype here")
    tokens, kv_heads, head_dim, num_blocks, block_size = 11, 3, 64, 8, 4
    qkv = torch.randn(tokens, (9 + 2 * kv_heads) * head_dim) * 50  # large values: rounding matters
    key = torch.randn(tokens, kv_heads, head_dim)
    value = qkv[:, -kv_heads * head_dim :].view(tokens, kv_heads, head_dim)  # strided token rows
    slots = torch.randperm(num_blocks * block_size)[:tokens]
    cache = torch.full((2, num_blocks, block_size, kv_heads, head_dim), 7.0, dtype=cache_dtype)
    expected = cache.clone()
    flat = expected.view(2, -1, kv_heads, head_dim)
    flat[0].index_copy_(0, slots, key.to(cache_dtype))
    flat[1].index_copy_(0, slots, value.to(cache_dtype))
    kernel.write_kv(key, value, slots, cache)
    assert torch.equal(cache, expected)  # bitwise: same rounding, untouched slots kept


def test_write_kv_refuses_what_it_cannot_read() -> None:
    kernel = load_paged_attention_kernel()
    if kernel is None:
        pytest.skip("no kernel here")
    key = torch.randn(2, 3, 8)
    cache = torch.zeros(2, 4, 4, 3, 8)
    slots = torch.tensor([0, 5])
    with pytest.raises(KernelError):
        kernel.write_kv(key.double(), key, slots, cache)
    with pytest.raises(KernelError):
        kernel.write_kv(key, key.transpose(1, 2).contiguous().transpose(1, 2), slots, cache)
    with pytest.raises(KernelError):
        kernel.write_kv(key, key, slots.int(), cache)
    with pytest.raises(KernelError):
        kernel.write_kv(key, key, slots, cache.bfloat16())
    with pytest.raises(KernelError):
        kernel.write_kv(key, key, slots, torch.zeros(2, 4, 4, 3, 4))
    assert torch.count_nonzero(cache) == 0
