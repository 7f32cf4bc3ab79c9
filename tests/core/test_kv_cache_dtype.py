"""The KV cache's element type (EngineConfig.kv_cache_dtype): validation, what "auto" resolves to,
how many blocks a byte budget holds, and engines running on a float16 cache (tiny models, and the
default SmolLM2 engine, slow).

How close a float16 cache should stay to float32: each cached key/value element is rounded with a
relative error of at most 2**-11 (~4.9e-4), so logits move by a few 1e-4 of their size; the
float32 results are computed by the same engine code with a float32 cache, never hard-coded.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

import pytest
import torch
from comparisons import kl_and_top1, shared_prefix_prompts
from fixtures_models import TinyModel
from ziggurat_core.engine import InferenceEngine, SamplingParams
from ziggurat_core.engine.attention.base import StepLayout
from ziggurat_core.engine.attention.torch_backend import PortableAttentionBackend
from ziggurat_core.engine.config import EngineConfig, ModelConfig
from ziggurat_core.engine.kv_cache_plan import kv_bytes_per_block, plan_kv_cache
from ziggurat_core.engine.model_runner import ModelRunner, resolve_kv_cache_dtype

CPU = torch.device("cpu")
TinyModelFactory = Callable[..., TinyModel]
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# ---- helpers ----


def teacher_forced_logits(
    runner: ModelRunner, token_ids: list[int], prefill_len: int, kv_dtype: torch.dtype
) -> torch.Tensor:
    """float32 logits [n, vocab] at every position of one sequence run through `runner.model`
    with a private zeroed cache of `kv_dtype`: the first `prefill_len` tokens in one step, then
    one decode step per token (the engine's own cache is left alone)."""
    mc = runner.model_config
    n, block_size = len(token_ids), runner.config.block_size
    num_blocks = -(-n // block_size)
    shape = (2, num_blocks, block_size, mc.num_key_value_heads, mc.head_dim)
    caches = [torch.zeros(shape, dtype=kv_dtype) for _ in range(mc.num_hidden_layers)]
    table = list(range(num_blocks))[::-1]  # blocks out of order, as a real table's may be
    ids = torch.tensor(token_ids, dtype=torch.long)
    steps = [(0, prefill_len)] + [(i, i + 1) for i in range(prefill_len, n)]
    logits = []
    with torch.inference_mode():
        for start, end in steps:
            layout = StepLayout([end - start], [end], [table], block_size)
            metadata = runner.attention.prepare(layout, runner.device)
            positions = torch.arange(start, end)
            hidden = runner.model(ids[start:end], positions, caches, runner.attention, metadata)
            logits.append(runner.model.compute_logits(hidden).float())
    return torch.cat(logits)


def greedy_tokens(
    engine: InferenceEngine, prompts: list[list[int]], max_tokens: int
) -> list[list[int]]:
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        engine.add_request(f"g{i}", prompt_token_ids=prompt, sampling_params=params)
    done = {o.request_id: o for o in engine.get_outputs() if o.finished}
    return [done[f"g{i}"].outputs[0].token_ids for i in range(len(prompts))]


def random_prompts(vocab: int, count: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(rng.randint(1, 30))] for _ in range(count)]


# ---- configuration ----


@pytest.mark.parametrize("value", ["auto", "float32", "float16", "bfloat16"])
def test_config_accepts_the_kv_cache_dtypes(value: str) -> None:
    EngineConfig(kv_cache_dtype=value).validate()


@pytest.mark.parametrize(
    "value", ["fp16", "half", "Float16", "float64", "int8", "fp8", "", " auto"]
)
def test_config_refuses_other_kv_cache_dtypes(value: str) -> None:
    expected = "kv_cache_dtype must be one of auto, float32, float16, bfloat16"
    with pytest.raises(ValueError, match=expected):
        EngineConfig(kv_cache_dtype=value).validate()
    with pytest.raises(ValueError, match=expected):  # a runner built without validate()
        resolve_kv_cache_dtype(value, "none", torch.float32)


def test_engine_refuses_a_bad_kv_cache_dtype(tiny_llama: TinyModel) -> None:
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        InferenceEngine(EngineConfig(model=str(tiny_llama.gguf_path), kv_cache_dtype="float8"))


def test_xformers_backend_refuses_a_cache_in_another_dtype(tiny_llama: TinyModel) -> None:
    """Only the torch backend converts between the cache and the run dtype."""
    config = EngineConfig(
        model=str(tiny_llama.gguf_path), attention_backend="xformers", kv_cache_dtype="float16"
    )
    with pytest.raises(ValueError, match="xformers.*needs the KV cache in the run dtype"):
        InferenceEngine(config)


# ---- "auto" ----


@pytest.mark.parametrize("run_dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_auto_is_float16_under_int8_and_the_run_dtype_otherwise(run_dtype: torch.dtype) -> None:
    assert resolve_kv_cache_dtype("auto", "int8", run_dtype) == torch.float16
    assert resolve_kv_cache_dtype("auto", "none", run_dtype) == run_dtype
    for name, dtype in DTYPES.items():  # an explicit dtype wins either way
        assert resolve_kv_cache_dtype(name, "int8", run_dtype) == dtype
        assert resolve_kv_cache_dtype(name, "none", run_dtype) == dtype


@pytest.mark.parametrize(
    ("quant", "quantization", "kv_cache_dtype", "linear", "expected"),
    [
        (None, "auto", "auto", "none", torch.float32),  # a float checkpoint: the run dtype
        ("Q8_0", "auto", "auto", "int8", torch.float16),  # a quantised GGUF on CPU: int8, f16 KV
        ("Q8_0", "none", "auto", "none", torch.float32),  # the same file run in float
        ("Q8_0", "auto", "float32", "int8", torch.float32),  # explicit settings win
        (None, "auto", "float16", "none", torch.float16),
        (None, "auto", "bfloat16", "none", torch.bfloat16),
    ],
    ids=["f32-gguf", "q8-gguf", "q8-gguf-float", "q8-gguf-f32-kv", "f16-kv", "bf16-kv"],
)
def test_engine_allocates_and_reports_the_resolved_kv_cache_dtype(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    tiny_model_factory: TinyModelFactory,
    caplog: pytest.LogCaptureFixture,
    quant: str | None,
    quantization: str,
    kv_cache_dtype: str,
    linear: str,
    expected: torch.dtype,
) -> None:
    if linear == "int8":  # auto picks int8 only with the kernels loaded, in a SIMD variant
        request.getfixturevalue("cpu_kernels")
        monkeypatch.delenv("ZIGGURAT_CPU_ISA", raising=False)
    tiny = tiny_model_factory("llama", quant)
    caplog.set_level(logging.INFO, logger="ziggurat.engine")
    config = EngineConfig(
        model=str(tiny.gguf_path),
        quantization=quantization,
        kv_cache_dtype=kv_cache_dtype,
        block_size=4,
        num_kv_blocks=40,
    )
    engine = InferenceEngine(config)
    runner = engine.runner
    assert runner.dtype == torch.float32
    assert runner.quantization == linear
    assert runner.kv_cache_dtype == expected
    assert isinstance(runner.attention, PortableAttentionBackend)
    mc = tiny.config
    shape = (2, 40, 4, mc.num_key_value_heads, mc.head_dim)
    assert len(runner.kv_caches) == mc.num_hidden_layers
    assert all(c.dtype == expected and tuple(c.shape) == shape for c in runner.kv_caches)
    element = torch.empty((), dtype=expected).element_size()
    per_block = 2 * mc.num_hidden_layers * 4 * mc.num_key_value_heads * mc.head_dim * element
    assert runner.kv_spec.bytes_per_block == per_block
    assert engine.stats().kv_cache_bytes == 40 * per_block
    name = str(expected).removeprefix("torch.")
    assert any(f"kv cache 40 blocks of {name}" in r.getMessage() for r in caplog.records)

    (tokens,) = greedy_tokens(engine, [[5, 17, 42, 9]], max_tokens=6)
    assert len(tokens) == 6 and all(0 <= t < mc.vocab_size for t in tokens)


# ---- planning ----


SMALL_MODEL = ModelConfig(
    architecture="llama",
    vocab_size=100,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
)
# K and V, 3 layers, 16 tokens, 2 kv heads of 16: 3072 elements per block.
SMALL_BLOCK_ELEMENTS = 2 * 3 * 16 * 2 * 16


def test_kv_bytes_per_block_follows_the_element_size() -> None:
    for dtype, size in [(torch.float32, 4), (torch.float16, 2), (torch.bfloat16, 2)]:
        assert kv_bytes_per_block(SMALL_MODEL, 16, dtype) == SMALL_BLOCK_ELEMENTS * size


def test_a_byte_budget_holds_twice_the_blocks_in_float16() -> None:
    budget = 2**20
    config = EngineConfig(block_size=16, kv_cache_memory="1MiB")
    f32 = plan_kv_cache(config, SMALL_MODEL, CPU, torch.float32, 256)
    f16 = plan_kv_cache(config, SMALL_MODEL, CPU, torch.float16, 256)
    bf16 = plan_kv_cache(config, SMALL_MODEL, CPU, torch.bfloat16, 256)
    assert f32.bytes_per_block == SMALL_BLOCK_ELEMENTS * 4
    assert f16.bytes_per_block == bf16.bytes_per_block == SMALL_BLOCK_ELEMENTS * 2
    assert f32.num_blocks == budget // (SMALL_BLOCK_ELEMENTS * 4) == 85
    assert f16.num_blocks == bf16.num_blocks == budget // (SMALL_BLOCK_ELEMENTS * 2) == 170
    assert f16.num_blocks in (2 * f32.num_blocks, 2 * f32.num_blocks + 1)
    assert f16.total_bytes <= budget and f32.total_bytes <= budget


def test_block_counts_that_do_not_come_from_bytes_stay_the_same() -> None:
    """An explicit count, or the CPU default capped at every seat filled to the context window:
    the same number of blocks, in half the bytes."""
    explicit = EngineConfig(block_size=16, num_kv_blocks=33)
    capped = EngineConfig(block_size=16, max_num_seqs=4)  # 4 seats x 256 tokens: 64 blocks + 1
    for config, blocks in [(explicit, 33), (capped, 65)]:
        f32 = plan_kv_cache(config, SMALL_MODEL, CPU, torch.float32, 256)
        f16 = plan_kv_cache(config, SMALL_MODEL, CPU, torch.float16, 256)
        assert f32.num_blocks == f16.num_blocks == blocks
        assert f16.total_bytes * 2 == f32.total_bytes == blocks * SMALL_BLOCK_ELEMENTS * 4


# ---- engines on a float16 cache ----


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_float16_cache_generates_the_greedy_tokens_of_float32_with_close_logits(
    tiny_model_factory: TinyModelFactory, arch: str
) -> None:
    """Float32 weights and compute (F32 GGUF), cache float16 or float32: the same greedy tokens
    (observed: all of them; along the first two continuations the smallest top-2 logit margin is
    ~9e-3 for llama and ~1.0 for qwen2, against logit changes of at most ~1e-3 and ~8e-3), and
    logits within a few 1e-4 of their size."""
    tiny = tiny_model_factory(arch)
    prompts = random_prompts(tiny.config.vocab_size, 6, seed=8)
    engines = {}
    tokens = {}
    for name in ("float32", "float16"):
        config = EngineConfig(
            model=str(tiny.gguf_path), block_size=4, num_kv_blocks=256, kv_cache_dtype=name
        )
        engines[name] = InferenceEngine(config)
        assert engines[name].runner.kv_cache_dtype == DTYPES[name]
        assert engines[name].runner.quantization == "none"
        tokens[name] = greedy_tokens(engines[name], prompts, max_tokens=24)
    assert all(len(t) == 24 for t in tokens["float32"])
    assert tokens["float16"] == tokens["float32"]

    # Teacher-forced over prompt + continuation, prefill then decode steps (the kernel path).
    ids = prompts[0] + tokens["float32"][0] + prompts[1] + tokens["float32"][1]
    runner = engines["float32"].runner
    exact = teacher_forced_logits(runner, ids, 10, torch.float32)
    half = teacher_forced_logits(runner, ids, 10, torch.float16)
    relative = (half - exact).norm(dim=-1) / exact.norm(dim=-1)
    assert float(relative.max()) < 3e-3  # observed <= 3.3e-4
    assert float(relative.max()) > 0  # the cache really rounds
    assert torch.equal(half.argmax(dim=-1), exact.argmax(dim=-1))
    # The float16 engine's own runner computes the same logits.
    own = teacher_forced_logits(engines["float16"].runner, ids, 10, torch.float16)
    assert torch.equal(own, half)


def _tight_and_roomy(tiny: TinyModel) -> tuple[InferenceEngine, InferenceEngine]:
    common: dict[str, Any] = dict(
        model=str(tiny.gguf_path), block_size=4, max_num_seqs=8, kv_cache_dtype="float16"
    )
    tight = InferenceEngine(
        EngineConfig(
            **common,
            num_kv_blocks=24,  # 96 slots for 8 sequences of up to 57 tokens: forces preemption
            max_num_batched_tokens=16,  # prompts of up to 45 tokens are prefilled in chunks
            enable_chunked_prefill=True,
            enable_prefix_caching=True,
        )
    )
    roomy = InferenceEngine(
        EngineConfig(
            **common, num_kv_blocks=400, max_num_batched_tokens=2048, enable_prefix_caching=False
        )
    )
    assert tight.runner.kv_cache_dtype == roomy.runner.kv_cache_dtype == torch.float16
    return tight, roomy


def _assert_pressure_was_real(tight: InferenceEngine) -> None:
    stats = tight.stats()
    assert stats.preemptions > 0, "the cache was meant to be too small for every sequence"
    assert stats.prefix_cache_hit_rate > 0
    assert stats.kv_blocks_used == 0


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_float16_cache_under_chunked_prefill_prefix_caching_and_preemption(
    tiny_model_factory: TinyModelFactory, arch: str
) -> None:
    """A tight float16 cache (chunked prompts, prefix-cache hits, preemptions and recomputation)
    gives the greedy tokens of a roomy one that prefills every prompt whole and shares nothing:
    every path attends over the same rounded values, so only float32 rounding differs."""
    tiny = tiny_model_factory(arch)
    prompts = shared_prefix_prompts(tiny.config.vocab_size, seed=3)
    tight, roomy = _tight_and_roomy(tiny)
    got = greedy_tokens(tight, prompts, max_tokens=12)
    expected = greedy_tokens(roomy, prompts, max_tokens=12)
    assert got == expected
    _assert_pressure_was_real(tight)
    assert roomy.stats().preemptions == 0


def test_int8_engine_on_float16_cache_under_chunking_prefix_caching_and_preemption(
    cpu_kernels: None, tiny_model_factory: TinyModelFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same pressure on the int8 engine (a Q8_0 GGUF, float16 cache by default): every
    request completes and every block comes back. Its tokens are not compared with the roomy
    engine's: per-token int8 activations re-round under any change of float32 rounding, and on
    this tiny model that flips near-ties (top-2 logit margins of ~1e-3) with a float32 cache too."""
    monkeypatch.delenv("ZIGGURAT_CPU_ISA", raising=False)  # auto picks int8 in a SIMD variant
    tiny = tiny_model_factory("llama", "Q8_0")
    prompts = shared_prefix_prompts(tiny.config.vocab_size, seed=3)
    engine = InferenceEngine(
        EngineConfig(
            model=str(tiny.gguf_path),
            block_size=4,
            max_num_seqs=8,
            num_kv_blocks=24,
            max_num_batched_tokens=16,
        )
    )
    assert engine.runner.quantization == "int8"
    assert engine.runner.kv_cache_dtype == torch.float16
    tokens = greedy_tokens(engine, prompts, max_tokens=12)
    assert [len(t) for t in tokens] == [12] * len(prompts)
    assert all(0 <= t < tiny.config.vocab_size for seq in tokens for t in seq)
    _assert_pressure_was_real(engine)


# ---- the default model (slow) ----

# Written for this test: ~110 tokens of plain English prose.
_TEXT = (
    "Lighthouses were once kept by families who lived at the foot of the tower. Every evening "
    "the keeper climbed the stairs, trimmed the wick and polished the great lens, and every "
    "morning he wrote in a logbook how the weather had been and which ships had passed. Storms "
    "could cut a station off from the mainland for weeks, so the keepers stored flour, salt fish "
    "and lamp oil in the cellar. Electric lamps and automatic timers ended the job in most "
    "countries, and many of the old towers are now museums or holiday cottages."
)


@pytest.fixture(scope="module")
def smollm2(cpu_kernels: None) -> InferenceEngine:
    # The default engine as it runs here: the kernels on in this CPU's own variant, so that
    # quantization="auto" resolves to int8 and the KV cache to float16.
    with pytest.MonkeyPatch.context() as env:
        env.delenv("ZIGGURAT_CPU_ISA", raising=False)
        return InferenceEngine(EngineConfig(model="default", max_num_seqs=4, max_model_len=1024))


@pytest.mark.slow
def test_default_engine_runs_a_float16_kv_cache(smollm2: InferenceEngine) -> None:
    runner = smollm2.runner
    assert smollm2.config.kv_cache_dtype == "auto"
    assert runner.quantization == "int8"
    assert runner.kv_cache_dtype == torch.float16
    assert all(c.dtype == torch.float16 for c in runner.kv_caches)
    mc = runner.model_config
    assert (mc.num_hidden_layers, mc.num_key_value_heads, mc.head_dim) == (30, 3, 64)
    assert runner.kv_spec.bytes_per_block == 2 * 30 * smollm2.config.block_size * 3 * 64 * 2

    params = SamplingParams(temperature=0.0, max_tokens=8)
    smollm2.add_request("paris", prompt="The capital of France is", sampling_params=params)
    (done,) = [o for o in smollm2.get_outputs() if o.finished]
    assert "Paris" in done.outputs[0].text


@pytest.mark.slow
def test_float16_cache_keeps_smollm2_next_token_distributions() -> None:
    """SmolLM2 with float weights (so that only the cache differs; int8 activations re-round
    under any small change): the next-token distributions over text it has not seen, prefilled
    then decoded one token at a time, with a float16 cache against a float32 one."""
    engine = InferenceEngine(
        EngineConfig(model="default", max_num_seqs=4, max_model_len=1024, quantization="none")
    )
    assert engine.runner.kv_cache_dtype == torch.float32  # "auto" without int8: the run dtype
    ids = engine.tokenizer.encode(_TEXT)
    assert 80 <= len(ids) <= 160
    prefill = len(ids) - 40  # then 40 decode steps through the kernel
    exact = teacher_forced_logits(engine.runner, ids, prefill, torch.float32)
    half = teacher_forced_logits(engine.runner, ids, prefill, torch.float16)
    kl, top1 = kl_and_top1(exact, half)
    assert kl < 1e-4, kl  # observed ~3e-7
    assert top1 >= 0.98, top1  # observed 1.0
    relative = (half - exact).norm(dim=-1) / exact.norm(dim=-1)
    assert float(relative.max()) < 1e-2  # observed ~1.5e-3
