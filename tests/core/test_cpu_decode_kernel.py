"""The C paged-decode attention kernel (cpu_kernels/paged_decode.py, csrc/paged_decode.c).

Its outputs are checked against a dense float64 reference built with plain torch from each
sequence's keys/values and `reference_mask`, directly and through PortableAttentionBackend (where it
must also agree with the pure-torch decode path); then batch and thread-count invariance, the
fallbacks when it cannot be built, its on-disk build cache, input validation, and an engine run.
Each for a float32 cache and a float16 one (query and output float32), whose reference is built
from the same float16 values upcast; and builds of the C file without half-precision support.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import platform
import random
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from fixtures_models import TinyModel
from ziggurat_core.engine import InferenceEngine, SamplingParams
from ziggurat_core.engine.attention import torch_backend
from ziggurat_core.engine.attention.base import StepLayout
from ziggurat_core.engine.attention.torch_backend import PortableAttentionBackend, reference_mask
from ziggurat_core.engine.config import EngineConfig
from ziggurat_core.engine.cpu_kernels import (
    KernelError,
    PagedAttentionKernel,
    load_paged_attention_kernel,
)
from ziggurat_core.engine.cpu_kernels import build as cpu_kernel

CPU = torch.device("cpu")
SENTINEL = -7777.0
# Cache slots outside every context hold values this large: a kernel that reads one of them
# (an off-by-one, a wrong block) is far off the reference, not just slightly.
NOISE_SCALE = 8.0
TOL = 1e-5
CACHE_DTYPES = [torch.float32, torch.float16]


# ---- building steps and the reference ----


@dataclass
class PagedStep:
    layout: StepLayout
    kv_cache: torch.Tensor  # [2, num_blocks, bs, kvh, d]; cached prefixes written, noise elsewhere
    keys: list[torch.Tensor]  # per sequence, its whole context [context_len, kvh, d]
    values: list[torch.Tensor]
    query: torch.Tensor  # [num_tokens, H, d]
    new_keys: torch.Tensor  # [num_tokens, kvh, d], the new tokens' keys in batch order
    new_values: torch.Tensor

    @property
    def decode_seqs(self) -> list[int]:
        return [i for i, q_len in enumerate(self.layout.query_lens) if q_len == 1]

    @property
    def decode_rows(self) -> list[int]:
        starts = [sum(self.layout.query_lens[:i]) for i in range(len(self.layout.query_lens))]
        return [starts[i] for i in self.decode_seqs]


def make_step(
    seqs: list[tuple[int, int]],  # (cached prefix length, new tokens) per sequence
    *,
    block_size: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype = torch.float32,
    cache_dtype: torch.dtype | None = None,
    spare_blocks: int = 9,
    seed: int = 0,
) -> PagedStep:
    """A step whose sequences own blocks scattered at random over a larger cache.

    Query and new keys/values are in `dtype`; the cache in `cache_dtype` (default `dtype`). The
    reference's `keys`/`values` are the values as the cache stores them (rounded to
    `cache_dtype`, back in `dtype`); `new_keys`/`new_values` keep their full precision, since a
    backend rounds them as it stores them.
    """
    cache_dtype = cache_dtype or dtype
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    needed = [-(-(prefix + new) // block_size) for prefix, new in seqs]
    num_blocks = sum(needed) + spare_blocks
    free = list(range(num_blocks))
    rng.shuffle(free)
    tables = []
    for count in needed:
        tables.append(free[:count])
        free = free[count:]

    shape = (2, num_blocks, block_size, num_kv_heads, head_dim)
    kv_cache = torch.randn(shape, generator=gen) * NOISE_SCALE
    keys, values, queries, new_keys, new_values = [], [], [], [], []
    for (prefix, new), table in zip(seqs, tables, strict=True):
        k = torch.randn(prefix + new, num_kv_heads, head_dim, generator=gen)
        v = torch.randn(prefix + new, num_kv_heads, head_dim, generator=gen)
        for pos in range(prefix):
            kv_cache[0, table[pos // block_size], pos % block_size] = k[pos]
            kv_cache[1, table[pos // block_size], pos % block_size] = v[pos]
        keys.append(k.to(cache_dtype).to(dtype))
        values.append(v.to(cache_dtype).to(dtype))
        new_keys.append(k[prefix:].to(dtype))
        new_values.append(v[prefix:].to(dtype))
        queries.append(torch.randn(new, num_heads, head_dim, generator=gen).to(dtype))
    layout = StepLayout(
        query_lens=[new for _, new in seqs],
        context_lens=[prefix + new for prefix, new in seqs],
        block_tables=tables,
        block_size=block_size,
    )
    return PagedStep(
        layout,
        kv_cache.to(cache_dtype),
        keys,
        values,
        torch.cat(queries),
        torch.cat(new_keys),
        torch.cat(new_values),
    )


def write_new_tokens(step: PagedStep) -> None:
    """Store the step's new keys/values in the cache, as a backend's forward does first."""
    bs = step.layout.block_size
    row = 0
    for q_len, ctx, table in zip(
        step.layout.query_lens, step.layout.context_lens, step.layout.block_tables, strict=True
    ):
        for pos in range(ctx - q_len, ctx):
            step.kv_cache[0, table[pos // bs], pos % bs] = step.new_keys[row]
            step.kv_cache[1, table[pos // bs], pos % bs] = step.new_values[row]
            row += 1


def dense_reference(step: PagedStep, scale: float) -> torch.Tensor:
    """float64 [num_tokens, H, d]: every token against all keys of the step under reference_mask."""
    num_heads = step.query.shape[1]
    group = num_heads // step.new_keys.shape[1]
    keys = torch.cat(step.keys).double().repeat_interleave(group, dim=1)  # [sum ctx, H, d]
    values = torch.cat(step.values).double().repeat_interleave(group, dim=1)
    scores = torch.einsum("thd,shd->hts", step.query.double(), keys) * scale
    probs = torch.softmax(scores + reference_mask(step.layout).double(), dim=-1)
    return torch.einsum("hts,shd->thd", probs, values)


def decode_inputs(step: PagedStep) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(block tables padded with 0, context lengths, token rows) of the step's decodes."""
    seqs = step.decode_seqs
    tables = [step.layout.block_tables[i] for i in seqs]
    width = max(len(t) for t in tables)
    padded = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int64)
    lens = torch.tensor([step.layout.context_lens[i] for i in seqs], dtype=torch.int64)
    return padded, lens, torch.tensor(step.decode_rows, dtype=torch.int64)


class CountingKernel:
    """Wraps the real kernel and counts the decode rows it was asked for."""

    def __init__(self, inner: PagedAttentionKernel) -> None:
        self.inner = inner
        self.calls = 0
        self.rows = 0
        self.writes = 0

    @property
    def cache_dtypes(self) -> tuple[torch.dtype, ...]:
        return self.inner.cache_dtypes

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        self.calls += 1
        self.rows += int(args[4].numel())  # token_rows
        self.inner(*args, **kwargs)

    def write_kv(self, *args: Any, **kwargs: Any) -> None:
        self.writes += 1
        self.inner.write_kv(*args, **kwargs)


@pytest.fixture(scope="module")
def kernel(cpu_kernels: None) -> PagedAttentionKernel:
    loaded = load_paged_attention_kernel()
    assert loaded is not None, "a C compiler is present but the kernel did not build"
    return loaded


def skip_without_half(kernel: PagedAttentionKernel, cache_dtype: torch.dtype) -> None:
    if cache_dtype == torch.float16 and not kernel.supports_float16:
        pytest.skip("this compiler/CPU builds the kernel without float16 support")


@pytest.fixture
def spy(kernel: PagedAttentionKernel, monkeypatch: pytest.MonkeyPatch) -> CountingKernel:
    """Backends created from now on get a counting wrapper around the real kernel."""
    counting = CountingKernel(kernel)
    monkeypatch.setattr(torch_backend, "load_paged_attention_kernel", lambda: counting)
    return counting


@pytest.fixture
def fresh_kernel_state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No memoised kernel and an empty cache dir (both restored afterwards); returns the dir."""
    monkeypatch.setattr(cpu_kernel, "_loaded", {})
    monkeypatch.delenv("ZIGGURAT_CPU_KERNELS", raising=False)
    # These tests fake or hide the compiler, whose macros decide which variants the CPU runs: a
    # variant forced for the whole run would be refused there, so they build the native one.
    monkeypatch.delenv("ZIGGURAT_CPU_ISA", raising=False)
    monkeypatch.setenv("ZIGGURAT_CACHE_DIR", str(tmp_path))
    return tmp_path / "kernels"


def mixed_seqs(block_size: int) -> list[tuple[int, int]]:
    """Decodes of context 700, 1, one block, two blocks and just over, between two prefills."""
    bs = block_size
    return [
        (699, 1),
        (0, 7),  # prefill from scratch
        (0, 1),  # context 1
        (bs - 1, 1),  # context exactly one block
        (bs + 3, 4),  # prefill after a cached prefix
        (2 * bs, 1),  # context one past a block boundary
        (2 * bs - 1, 1),  # context exactly two blocks
    ]


def run_backend(
    step: PagedStep, scale: float, decode_kernel: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, cache after the step) of one forward on a copy of the step's cache."""
    backend = PortableAttentionBackend(decode_kernel=decode_kernel)
    cache = step.kv_cache.clone()
    metadata = backend.prepare(step.layout, CPU)
    out = backend.forward(step.query, step.new_keys, step.new_values, cache, metadata, scale)
    return out, cache


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


# ---- loading, building and falling back ----


def test_disabled_by_environment(
    kernel: PagedAttentionKernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load_paged_attention_kernel() is kernel  # memoised
    monkeypatch.setenv("ZIGGURAT_CPU_KERNELS", "0")
    assert load_paged_attention_kernel() is None  # even with a kernel memoised

    step = make_step(mixed_seqs(16), block_size=16, num_heads=4, num_kv_heads=2, head_dim=32)
    out, _ = run_backend(step, 0.2, decode_kernel=True)
    torch.testing.assert_close(out.double(), dense_reference(step, 0.2), rtol=TOL, atol=TOL)


@pytest.mark.parametrize("compiler", ["false", "missing", "none"])
def test_unbuildable_kernel_falls_back_to_torch_with_one_warning(
    fresh_kernel_state: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    compiler: str,
) -> None:
    if compiler == "false":  # a compiler that fails
        false = shutil.which("false")
        assert false is not None
        monkeypatch.setenv("CC", false)
    elif compiler == "missing":  # $CC names no program
        monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    else:  # no compiler at all
        monkeypatch.delenv("CC", raising=False)
        monkeypatch.setattr(cpu_kernel.shutil, "which", lambda name: None)
    caplog.set_level(logging.WARNING, logger="ziggurat.engine")

    assert load_paged_attention_kernel() is None
    assert load_paged_attention_kernel() is None  # memoised: no second attempt, no second warning
    warnings = [
        r for r in caplog.records if r.name == "ziggurat.engine" and r.levelno == logging.WARNING
    ]
    assert len(warnings) == 1
    assert "torch ops" in warnings[0].getMessage()

    step = make_step(mixed_seqs(16), block_size=16, num_heads=6, num_kv_heads=2, head_dim=64)
    out, _ = run_backend(step, 0.125, decode_kernel=True)
    torch.testing.assert_close(out.double(), dense_reference(step, 0.125), rtol=TOL, atol=TOL)


@pytest.mark.parametrize("compiler", ["false", "missing"])
def test_failed_build_leaves_no_file_behind(
    fresh_kernel_state: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, compiler: str
) -> None:
    false = shutil.which("false")
    assert false is not None
    monkeypatch.setenv("CC", false if compiler == "false" else str(tmp_path / "no-such-compiler"))
    assert load_paged_attention_kernel() is None
    assert fresh_kernel_state.is_dir()  # the build was attempted there
    # No library and no half-written temporary file: only the record of the failure.
    assert [path.suffix for path in fresh_kernel_state.iterdir()] == [".failed"]


def test_build_is_cached_on_disk_and_reused(
    fresh_kernel_state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = load_paged_attention_kernel()
    assert built is not None
    files = list(fresh_kernel_state.iterdir())
    assert len(files) == 1 and files[0].suffix == ".so", files
    mtime = files[0].stat().st_mtime_ns

    def no_compiling(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"the kernel was rebuilt: {args}")

    monkeypatch.setattr(cpu_kernel, "_loaded", {})  # as in a new process
    monkeypatch.setattr(cpu_kernel.subprocess, "run", no_compiling)
    reloaded = load_paged_attention_kernel()
    assert reloaded is not None and reloaded is not built
    assert list(fresh_kernel_state.iterdir()) == files
    assert files[0].stat().st_mtime_ns == mtime

    step = make_step(
        [(9, 1), (0, 3), (33, 1)], block_size=4, num_heads=4, num_kv_heads=4, head_dim=16
    )
    write_new_tokens(step)
    tables, lens, rows = decode_inputs(step)
    out = torch.full(step.query.shape, SENTINEL)
    reloaded(step.query, step.kv_cache, tables, lens, rows, out, 0.25)
    torch.testing.assert_close(
        out[rows].double(), dense_reference(step, 0.25)[rows], rtol=TOL, atol=TOL
    )


def test_cache_dir_defaults_to_xdg_cache_home(
    fresh_kernel_state: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    xdg = tmp_path / "xdg"
    monkeypatch.delenv("ZIGGURAT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    monkeypatch.setenv("CC", "cc")  # never run: the build below is simulated
    monkeypatch.setattr(cpu_kernel.subprocess, "run", _failing_build)
    assert load_paged_attention_kernel() is None  # the build is attempted in the XDG location
    assert (xdg / "ziggurat" / "kernels").is_dir()
    assert not fresh_kernel_state.exists()


def _failing_build(*args: Any, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.CompletedProcess(args, 1, "", "simulated compiler failure")


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 compiler flags")
@pytest.mark.parametrize(
    ("flags", "has_half"),
    [
        # No F16C or AVX-512: halves converted one at a time through the compiler's _Float16.
        (["-mno-avx512f", "-mno-f16c"], True),
        # As a compiler without _Float16 would see it: no float16 entry point at all.
        (["-mno-avx512f", "-mno-f16c", "-U__FLT16_MAX__"], False),
    ],
    ids=["scalar-float16", "no-float16"],
)
def test_kernel_builds_with_and_without_half_support(
    kernel: PagedAttentionKernel,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    flags: list[str],
    has_half: bool,
) -> None:
    """The C file built without F16C/AVX-512 (and without _Float16): the float32 kernel always
    works, the float16 one exists exactly when the build says so, and the backend takes the
    torch path for a float16 cache the build cannot read."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    assert compiler is not None  # the `kernel` fixture skips without one
    if has_half:
        macros = subprocess.run(
            [compiler, *flags, "-dM", "-E", "-"], input="", capture_output=True, text=True
        )
        if "__FLT16_MAX__" not in macros.stdout:
            pytest.skip("this compiler has no _Float16")
    csrc = Path(cpu_kernel.__file__).parent / "csrc"
    sources = [str(csrc / "paged_decode.c"), str(csrc / "paged_prefill.c")]
    library = tmp_path / "paged_decode.so"
    command = [compiler, *cpu_kernel._FLAGS, *flags, *sources, "-o", str(library), "-lm"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    built = PagedAttentionKernel(ctypes.CDLL(str(library)))
    assert built.supports_float16 is has_half
    assert built.cache_dtypes == ((torch.float32, torch.float16) if has_half else (torch.float32,))

    for cache_dtype in CACHE_DTYPES:
        step = make_step(
            mixed_seqs(16),
            block_size=16,
            num_heads=6,
            num_kv_heads=2,
            head_dim=64,
            cache_dtype=cache_dtype,
            seed=17,
        )
        write_new_tokens(step)
        tables, lens, rows = decode_inputs(step)
        out = torch.full(step.query.shape, SENTINEL)
        if cache_dtype in built.cache_dtypes:
            built(step.query, step.kv_cache, tables, lens, rows, out, 0.125)
            expected = dense_reference(step, 0.125)[rows]
            torch.testing.assert_close(out[rows].double(), expected, rtol=TOL, atol=TOL)
        else:
            with pytest.raises(KernelError, match="kv_cache"):
                built(step.query, step.kv_cache, tables, lens, rows, out, 0.125)
            assert (out == SENTINEL).all()

    counting = CountingKernel(built)
    monkeypatch.setattr(torch_backend, "load_paged_attention_kernel", lambda: counting)
    step = make_step(
        mixed_seqs(16),
        block_size=16,
        num_heads=6,
        num_kv_heads=2,
        head_dim=64,
        cache_dtype=torch.float16,
    )
    out, _ = run_backend(step, 0.125, decode_kernel=True)
    assert counting.calls == (1 if has_half else 0)
    torch.testing.assert_close(out.double(), dense_reference(step, 0.125), rtol=TOL, atol=TOL)


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
