"""int8 (W8A8) Linear layers: the quantisers' error bounds, smoothing, batch invariance, how the
engine picks int8, and int8 against float on tiny random models and on SmolLM2 (slow).

References are plain float (float64 where it matters) torch ops on the dense weights.

Error budget used below: symmetric per-row int8 rounds each element to a multiple of
s = max|row| / 127, an error uniform in [-s/2, s/2] (rms s / sqrt(12)). For Gaussian data the
row max of k ~ 100-200 values is ~3 standard deviations, so each operand carries a relative rms
error of ~3 / (127 * sqrt(12)) ~ 0.7% and a product of two quantised operands ~1% of the output
norm. Bounds of 3% per product leave a 3x margin; a model chains ~9 of them (2-layer tiny model).
"""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F
from comparisons import kl_and_top1
from fixtures_models import TinyModel
from torch import nn
from ziggurat_core.engine import LLM, InferenceEngine, SamplingParams
from ziggurat_core.engine.attention.base import StepLayout
from ziggurat_core.engine.config import EngineConfig
from ziggurat_core.engine.layers import Linear
from ziggurat_core.engine.layers.packed import Int8Weight, quantize_rows_int8
from ziggurat_core.engine.loader import load_checkpoint
from ziggurat_core.engine.model_runner import ModelRunner, resolve_quantization
from ziggurat_core.engine.outputs import RequestOutput
from ziggurat_core.engine.quantization import (
    _QUIET_CHANNEL_FLOOR,
    measure_input_absmax,
    quantize_linears_int8,
    smoothing_factors,
)

# ----------------------------------------------------------------------------- helpers


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def relative_row_error(got: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """||got - expected|| / ||expected|| per row, in float64."""
    got, expected = got.double(), expected.double()
    return (got - expected).norm(dim=-1) / expected.norm(dim=-1)


def int8_product_error_bound(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Worst-case |x_q W_q^T - x W^T| [rows, out] when x rows and W rows are each rounded to
    multiples of their own max|.|/127: with x_q = x + e, W_q = W + E, |e| <= sx/2, |E| <= sw/2,
    the error e W^T + x E^T + e E^T is at most (sx/2) sum|W| + (sw/2) sum|x| + k (sx/2)(sw/2)."""
    x, weight = x.double(), weight.double()
    half_sx = x.abs().amax(dim=1, keepdim=True) / 127 / 2  # [rows, 1]
    half_sw = weight.abs().amax(dim=1) / 127 / 2  # [out]
    k = x.shape[1]
    return (
        half_sx * weight.abs().sum(dim=1)[None, :]
        + x.abs().sum(dim=1, keepdim=True) * half_sw[None, :]
        + k * half_sx * half_sw[None, :]
    )


def full_sequence_logits(engine: InferenceEngine, token_ids: list[int]) -> torch.Tensor:
    """float32 logits [n, vocab] at every position of one sequence, prefilled in one step
    through `engine.runner.model` into a private zeroed KV cache (the engine's cache and its
    prefix-cache contents are left alone)."""
    runner = engine.runner
    mc = runner.model_config
    n, block_size = len(token_ids), engine.config.block_size
    num_blocks = -(-n // block_size)
    shape = (2, num_blocks, block_size, mc.num_key_value_heads, mc.head_dim)
    caches = [
        torch.zeros(shape, dtype=runner.kv_cache_dtype, device=runner.device)
        for _ in range(mc.num_hidden_layers)
    ]
    layout = StepLayout([n], [n], [list(range(num_blocks))], block_size)
    metadata = runner.attention.prepare(layout, runner.device)
    ids = torch.tensor(token_ids, dtype=torch.long, device=runner.device)
    positions = torch.arange(n, device=runner.device)
    with torch.inference_mode():
        hidden = runner.model(ids, positions, caches, runner.attention, metadata)
        return runner.model.compute_logits(hidden).float().cpu()


def linears(model: nn.Module) -> list[Linear]:
    return [m for m in model.modules() if isinstance(m, Linear)]


# ----------------------------------------------------------------------------- quantize_rows_int8


def test_quantize_rows_int8_round_trip_is_within_half_a_step() -> None:
    # Rows spanning six orders of magnitude: each row must get its own scale.
    x = randn(16, 200, seed=0) * torch.logspace(-3, 3, 16)[:, None]
    q, scale = quantize_rows_int8(x)

    assert q.dtype == torch.int8 and q.shape == x.shape
    assert scale.dtype == torch.float32 and scale.shape == (16, 1)
    torch.testing.assert_close(scale, x.abs().amax(dim=1, keepdim=True) / 127, rtol=1e-6, atol=0)
    assert int(q.abs().max()) == 127 and int(q.min()) >= -127  # symmetric: -128 never used
    error = (q.double() * scale.double() - x.double()).abs()
    assert bool((error <= scale.double() * (0.5 + 1e-5)).all())
    # Each row's largest magnitude lands on +-127 with its sign.
    peak = x.abs().argmax(dim=1, keepdim=True)
    assert torch.equal(q.gather(1, peak).long(), 127 * x.gather(1, peak).sign().long())


def test_quantize_rows_int8_zero_rows_give_zeros() -> None:
    x = randn(4, 32, seed=1)
    x[2] = 0.0
    q, scale = quantize_rows_int8(x)
    assert bool(torch.isfinite(scale).all()) and float(scale[2]) > 0
    assert bool((q[2] == 0).all())
    dequantised = q.float() * scale
    assert bool(torch.isfinite(dequantised).all()) and bool((dequantised[2] == 0).all())
    # A layer fed an all-zero row outputs exactly its bias, not NaN.
    weight, bias = randn(8, 32, seed=2), randn(8, seed=3)
    out = Int8Weight(weight, bias)(torch.zeros(1, 32))
    assert torch.equal(out[0], bias)


def test_quantize_rows_int8_accepts_bfloat16() -> None:
    x = randn(3, 64, seed=4).to(torch.bfloat16)
    q, scale = quantize_rows_int8(x)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32
    assert bool(((q.float() * scale - x.float()).abs() <= scale * (0.5 + 1e-5)).all())


# ----------------------------------------------------------------------------- Int8Weight


@pytest.mark.parametrize("rows", [1, 7, 64])
@pytest.mark.parametrize("with_bias", [False, True])
def test_int8_weight_is_close_to_f_linear(rows: int, with_bias: bool) -> None:
    k, out_features = 192, 80
    weight = randn(out_features, k, seed=10) / math.sqrt(k)
    bias = randn(out_features, seed=11) if with_bias else None
    x = randn(rows, k, seed=12)
    expected = F.linear(x.double(), weight.double(), None if bias is None else bias.double())

    got = Int8Weight(weight, bias)(x)

    assert got.shape == (rows, out_features) and got.dtype == torch.float32
    # Integer accumulation is exact, so only the two roundings (and float32 scaling) remain.
    bound = int8_product_error_bound(x, weight) + 1e-5 * expected.abs() + 1e-6
    assert bool(((got.double() - expected).abs() <= bound).all())
    # Relative to the product x W^T alone (the bias is added exactly): ~1%, see the module doc.
    bias_term = 0.0 if bias is None else bias.double()
    assert float(relative_row_error(got.double() - bias_term, expected - bias_term).max()) < 0.03


def test_int8_packed_linear_takes_3d_input_and_keeps_dtype() -> None:
    layer = Linear(64, 40, bias=True)
    with torch.no_grad():
        assert layer.weight is not None and layer.bias is not None
        layer.weight.copy_(randn(40, 64, seed=20) / 8)
        layer.bias.copy_(randn(40, seed=21))
    weight, bias = layer.weight.detach().clone(), layer.bias.detach().clone()
    x = randn(3, 5, 64, seed=22)
    layer.pack("int8")
    assert isinstance(layer.packed, Int8Weight) and layer.weight is None and layer.bias is None
    got = layer(x)
    assert got.shape == (3, 5, 40) and got.dtype == torch.float32
    expected = F.linear(x, weight, bias)
    bound = int8_product_error_bound(x.reshape(15, 64), weight).reshape(3, 5, 40)
    assert bool(((got - expected).abs().double() <= bound + 1e-5).all())


def test_dequantize_is_the_weight_within_half_a_step() -> None:
    weight = randn(24, 96, seed=30)
    weight[5] = 0.0  # an all-zero row stays zero
    packed = Int8Weight(weight, None)
    dequantised = packed.dequantize()
    assert dequantised.shape == weight.shape and dequantised.dtype == weight.dtype
    half_step = weight.abs().amax(dim=1, keepdim=True) / 127 / 2
    assert bool(((dequantised - weight).abs() <= half_step * (1 + 1e-5) + 1e-12).all())
    assert bool((dequantised[5] == 0).all())


def _outlier_inputs(rows: int, k: int, seed: int) -> torch.Tensor:
    """Activations with a few channels ~60x larger than the rest, as RMSNorm gains make."""
    x = randn(rows, k, seed=seed)
    x[:, [3, 50, 77]] *= 60
    return x


def test_smoothing_keeps_the_product_and_cuts_the_error_of_outlier_channels() -> None:
    k, out_features = 128, 96
    weight = randn(out_features, k, seed=40) / math.sqrt(k)
    bias = randn(out_features, seed=41)
    x = _outlier_inputs(32, k, seed=42)
    smoothing = smoothing_factors(x.abs().amax(dim=0), weight)
    expected = F.linear(x.double(), weight.double(), bias.double())

    plain = Int8Weight(weight, bias)
    smoothed = Int8Weight(weight, bias, smoothing)

    # The stored weight stands for W itself: columns were scaled by s and are divided back, so
    # the error in column j is at most half a step of the smoothed row, over s_j.
    step = (weight * smoothing[None, :]).abs().amax(dim=1, keepdim=True) / 127
    bound = step / 2 / smoothing[None, :]
    assert bool(((smoothed.dequantize() - weight).abs() <= bound * (1 + 1e-4) + 1e-7).all())

    got = smoothed(x)
    # Exactly the int8 product of x / s and W * s (the same bound as without smoothing).
    scaled_bound = int8_product_error_bound(x / smoothing, weight * smoothing)
    assert bool(((got.double() - expected).abs() <= scaled_bound + 1e-5 * expected.abs()).all())
    error_plain = float(relative_row_error(plain(x) - bias, expected - bias.double()).max())
    error_smoothed = float(relative_row_error(got - bias, expected - bias.double()).max())
    # Without smoothing the outliers set every row's activation step (observed ~3.1%);
    # smoothing moves their range into the weight (observed ~1.1%).
    assert error_smoothed < 0.02
    assert error_smoothed < error_plain / 2


@pytest.mark.parametrize(
    "smoothing",
    [
        torch.ones(33),  # wrong length
        torch.ones(1, 32),  # wrong rank
        torch.cat([torch.ones(31), torch.zeros(1)]),  # zero
        torch.cat([torch.ones(31), -torch.ones(1)]),  # negative
    ],
    ids=["length", "rank", "zero", "negative"],
)
def test_invalid_smoothing_raises_and_leaves_the_layer_dense(smoothing: torch.Tensor) -> None:
    weight = randn(8, 32, seed=50)
    with pytest.raises(ValueError, match="smoothing"):
        Int8Weight(weight, None, smoothing)
    layer = Linear(32, 8)
    with torch.no_grad():
        assert layer.weight is not None
        layer.weight.copy_(weight)
    with pytest.raises(ValueError, match="smoothing"):
        layer.pack("int8", smoothing)
    assert layer.packed is None and layer.weight is not None
    x = randn(2, 32, seed=51)
    torch.testing.assert_close(layer(x), F.linear(x, weight))


@pytest.mark.parametrize("smoothed", [False, True])
def test_each_row_alone_is_bitwise_equal_to_the_same_row_in_a_batch(smoothed: bool) -> None:
    k, out_features = 96, 160
    weight = randn(out_features, k, seed=60) / math.sqrt(k)
    bias = randn(out_features, seed=61)
    # Rows of very different magnitudes, so a shared scale would show.
    x = _outlier_inputs(64, k, seed=62) * torch.logspace(-2, 2, 64)[:, None]
    smoothing = smoothing_factors(x.abs().amax(dim=0), weight) if smoothed else None
    packed = Int8Weight(weight, bias, smoothing)

    batch = packed(x)
    for i in range(64):
        assert torch.equal(packed(x[i : i + 1])[0], batch[i]), f"row {i}"
    assert torch.equal(packed(x[10:17]), batch[10:17])


# ----------------------------------------------------------------------------- smoothing_factors


def test_smoothing_factors_balance_ranges_and_floor_quiet_channels() -> None:
    k = 65  # odd: the median is one channel's value
    generator = torch.Generator().manual_seed(70)
    input_absmax = torch.rand(k, generator=generator) * 10 + 0.01
    input_absmax[[4, 9]] = 0.0  # channels never active during calibration
    input_absmax[20] = 500.0  # an outlier channel
    weight = randn(48, k, seed=71)
    weight_absmax = weight.abs().amax(dim=0)

    s = smoothing_factors(input_absmax, weight)

    assert s.shape == (k,) and bool((s > 0).all()) and bool(torch.isfinite(s).all())
    floor = _QUIET_CHANNEL_FLOOR * input_absmax.median()
    loud = input_absmax >= floor
    quiet = ~loud
    assert int(loud.sum()) >= k // 2 + 1 and int(quiet.sum()) >= 2
    # Balanced: after smoothing, activation and weight columns have the same range.
    torch.testing.assert_close(
        input_absmax[loud] / s[loud], weight_absmax[loud] * s[loud], rtol=1e-5, atol=0
    )
    # Quiet channels are treated as if they reached the floor.
    torch.testing.assert_close(s[quiet], (floor / weight_absmax[quiet]).sqrt(), rtol=1e-5, atol=0)
    assert bool((s[quiet] > (input_absmax[quiet] / weight_absmax[quiet]).sqrt()).all())


# ----------------------------------------------------------------------------- calibration


class _TwoLinears(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = Linear(8, 16, bias=True)
        self.second = Linear(16, 4)
        self.other = nn.Linear(4, 4).requires_grad_(False)  # not ours: not measured
        with torch.no_grad():
            for i, param in enumerate(self.parameters()):
                param.copy_(randn(*param.shape, seed=80 + i))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.other(self.second(F.gelu(self.first(x))))


def test_measure_input_absmax_is_the_per_channel_max_and_removes_its_hooks() -> None:
    model = _TwoLinears()
    batches = [randn(2, 3, 8, seed=90), randn(5, 8, seed=91) * 3]

    def run() -> None:
        for x in batches:
            model(x)

    absmax = measure_input_absmax(model, run)

    assert set(absmax) == {"first", "second"}
    first_inputs = torch.cat([x.reshape(-1, 8) for x in batches])
    assert model.first.weight is not None
    second_inputs = F.gelu(F.linear(first_inputs, model.first.weight, model.first.bias))
    torch.testing.assert_close(absmax["first"], first_inputs.abs().amax(dim=0), rtol=0, atol=0)
    torch.testing.assert_close(absmax["second"], second_inputs.abs().amax(dim=0))
    assert all(not m._forward_pre_hooks for m in model.modules())

    def broken() -> None:
        model(batches[0])
        raise RuntimeError("calibration failed")

    with pytest.raises(RuntimeError, match="calibration failed"):
        measure_input_absmax(model, broken)
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_quantize_linears_int8_smooths_only_measured_layers() -> None:
    model = _TwoLinears()
    x = randn(6, 8, seed=92)
    expected = model(x)

    def run() -> None:
        model(x)

    absmax = measure_input_absmax(model, run)
    del absmax["second"]

    assert quantize_linears_int8(model, absmax) == 2
    assert (
        isinstance(model.first.packed, Int8Weight) and model.first.packed.inv_smoothing is not None
    )
    assert isinstance(model.second.packed, Int8Weight) and model.second.packed.inv_smoothing is None
    assert model.first.weight is None and isinstance(model.other.weight, nn.Parameter)
    assert float(relative_row_error(model(x), expected).max()) < 0.05  # two int8 products
    assert quantize_linears_int8(model, None) == 0  # already packed


# ----------------------------------------------------------------------------- choosing int8


def test_engine_config_validates_quantization() -> None:
    for value in ("auto", "none", "int8"):
        EngineConfig(quantization=value).validate()
    with pytest.raises(ValueError, match="quantization"):
        EngineConfig(quantization="bogus").validate()


def test_resolve_quantization(tiny_model_factory) -> None:
    quantised = load_checkpoint(tiny_model_factory("llama", "Q8_0").gguf_path)
    f32_tiny: TinyModel = tiny_model_factory("llama")
    f32_gguf = load_checkpoint(f32_tiny.gguf_path)
    safetensors = load_checkpoint(f32_tiny.hf_dir)
    assert quantised.weights_quantized
    assert not f32_gguf.weights_quantized and not safetensors.weights_quantized

    cpu, meta, cuda = torch.device("cpu"), torch.device("meta"), torch.device("cuda")
    assert resolve_quantization("auto", quantised, cpu, "avx2") == "int8"
    assert resolve_quantization("auto", f32_gguf, cpu, "avx512vnni") == "none"
    assert resolve_quantization("auto", safetensors, cpu, "avx512vnni") == "none"
    # int8 is a CPU format: auto never picks it elsewhere, and asking for it there fails.
    assert resolve_quantization("auto", quantised, meta, "avx512vnni") == "none"
    assert resolve_quantization("auto", quantised, cuda, "avx512vnni") == "none"
    for device in (meta, cuda):
        with pytest.raises(ValueError, match="CPU"):
            resolve_quantization("int8", f32_gguf, device, "avx512vnni")
        assert resolve_quantization("none", quantised, device, "avx512vnni") == "none"
    assert resolve_quantization("int8", f32_gguf, cpu, "avx512vnni") == "int8"
    assert resolve_quantization("none", quantised, cpu, "avx512vnni") == "none"


def test_auto_engine_on_a_quantised_gguf_runs_int8(
    cpu_kernels: None, tiny_model_factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The decision with this CPU's own variant: a forced scalar one has no int8 GEMM to pick.
    monkeypatch.delenv("ZIGGURAT_CPU_ISA", raising=False)
    tiny: TinyModel = tiny_model_factory("qwen2", "Q8_0")
    engine = InferenceEngine(
        EngineConfig(model=str(tiny.gguf_path), num_kv_blocks=64, block_size=4)
    )
    assert engine.runner.quantization == "int8"
    assert all(isinstance(m.packed, Int8Weight) for m in linears(engine.runner.model))
    f32 = InferenceEngine(
        EngineConfig(
            model=str(tiny_model_factory("qwen2").gguf_path), num_kv_blocks=64, block_size=4
        )
    )
    assert f32.runner.quantization == "none"
    assert not any(isinstance(m.packed, Int8Weight) for m in linears(f32.runner.model))


# ----------------------------------------------------------------------------- engine, tiny models


def _tiny_engine(tiny: TinyModel, quantization: str) -> InferenceEngine:
    return InferenceEngine(
        EngineConfig(
            model=str(tiny.gguf_path),
            quantization=quantization,
            block_size=4,
            num_kv_blocks=64,
            max_num_seqs=8,
        )
    )


def _prompt_ids(vocab: int, n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, vocab) for _ in range(n)]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_int8_engine_packs_every_linear_and_stays_close_to_float(
    tiny_model_factory, arch: str
) -> None:
    tiny: TinyModel = tiny_model_factory(arch)
    int8 = _tiny_engine(tiny, "int8")
    reference = _tiny_engine(tiny, "none")

    assert int8.runner.quantization == "int8" and reference.runner.quantization == "none"
    layers = linears(int8.runner.model)
    assert len(layers) == 4 * tiny.config.num_hidden_layers + 1  # qkv, o, gate_up, down; lm_head
    for layer in layers:
        assert isinstance(layer.packed, Int8Weight) and layer.weight is None
    # The engine ran its calibration text through the decoder, so its layers are smoothed
    # (the calibration pass computes no logits: lm_head is not measured).
    for layer in linears(int8.runner.model.model):
        assert isinstance(layer.packed, Int8Weight) and layer.packed.inv_smoothing is not None
    if tiny.config.tie_word_embeddings:
        assert isinstance(int8.runner.model.model.embed_tokens.weight, nn.Parameter)

    ids = _prompt_ids(tiny.config.vocab_size, 60, seed=1)
    got = full_sequence_logits(int8, ids)
    expected = full_sequence_logits(reference, ids)
    # 9 int8 products of ~1% each, partly averaging out: observed <= 2.9%.
    assert float(relative_row_error(got, expected).max()) < 0.06
    kl, top1 = kl_and_top1(expected, got)
    assert kl < 0.01 and top1 >= 0.9  # observed: KL <= 2e-4, top-1 >= 0.98


def test_int8_engine_generates_batch_invariantly(tiny_llama: TinyModel) -> None:
    config = EngineConfig(quantization="int8", block_size=4, num_kv_blocks=64, max_num_seqs=8)
    llm = LLM(str(tiny_llama.gguf_path), config=config)
    assert llm.engine.runner.quantization == "int8"
    vocab = tiny_llama.config.vocab_size
    prompts = [_prompt_ids(vocab, n, seed=10 + n) for n in (5, 17, 9, 30)]

    def tokens(outputs: list[RequestOutput]) -> list[list[int]]:
        return [o.outputs[0].token_ids for o in outputs]

    greedy = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    together = tokens(llm.generate(prompts, greedy, use_tqdm=False))
    assert all(len(t) == 10 and all(0 <= i < vocab for i in t) for t in together)
    alone = [tokens(llm.generate([p], greedy, use_tqdm=False))[0] for p in prompts]
    assert together == alone

    seeded = SamplingParams(temperature=1.0, top_p=0.95, seed=1234, max_tokens=12, ignore_eos=True)
    noise = SamplingParams(temperature=1.0, max_tokens=12, ignore_eos=True)
    single = tokens(llm.generate([prompts[1]], seeded, use_tqdm=False))[0]
    batch = tokens(llm.generate(prompts, [noise, seeded, noise, noise], use_tqdm=False))
    assert batch[1] == single
    other_seed = SamplingParams(
        temperature=1.0, top_p=0.95, seed=99, max_tokens=12, ignore_eos=True
    )
    assert tokens(llm.generate([prompts[1]], other_seed, use_tqdm=False))[0] != single


def test_runner_without_calibration_packs_int8_unsmoothed(tiny_llama: TinyModel) -> None:
    config = EngineConfig(model=str(tiny_llama.gguf_path), quantization="int8", num_kv_blocks=16)
    runner = ModelRunner(config, load_checkpoint(tiny_llama.gguf_path), max_model_len=64)
    assert runner.quantization == "int8"
    layers = linears(runner.model)
    assert layers and all(
        isinstance(m.packed, Int8Weight) and m.packed.inv_smoothing is None for m in layers
    )


# ----------------------------------------------------------------------------- SmolLM2 (slow)

# Written for this test (not from calibration_text.py): ~300 tokens of plain English prose.
_EVAL_TEXT = (
    "The first bicycles had no pedals at all. Riders sat on a wooden frame between two wheels and "
    "pushed themselves along the road with their feet, which made the machine popular with young "
    "men in cities and unpopular with almost everyone else. Within a few decades inventors added "
    "cranks to the front wheel, and because a larger wheel travelled further with each turn of "
    "the pedals, the front wheel grew until it was taller than a person. These high wheelers were "
    "fast but dangerous: a stone in the road could throw the rider over the handlebars and onto "
    "his head. The safety bicycle solved the problem with a chain that drove the rear wheel, so "
    "both wheels could be the same modest size. Air-filled tyres arrived a few years later and "
    "made the ride far more comfortable on rough streets. Bicycles soon became cheap enough for "
    "factory workers, and for many women they offered a new kind of freedom, since a woman on a "
    "bicycle could travel to the next town without asking anyone for a carriage. Clothing changed "
    "as a result, with shorter skirts and looser jackets becoming common. Today there are more "
    "than a billion bicycles in the world. In some countries they are mostly used for sport and "
    "leisure, while in others they remain the main way people get to school, to the market and "
    "to work. Engineers still argue about the best shape for a frame, and new materials such as "
    "carbon fibre have made racing machines lighter than ever, yet the basic design has hardly "
    "changed in more than a century."
)


def _smollm2(**overrides: str) -> InferenceEngine:
    # A shorter context than the model's 8192 keeps the KV cache small; the 719-token
    # calibration text still fits, so int8 is calibrated exactly as in the default engine.
    return InferenceEngine(
        EngineConfig(model="default", max_num_seqs=4, max_model_len=1024, **overrides)
    )


@pytest.fixture(scope="module")
def smollm2_default(cpu_kernels: None) -> InferenceEngine:
    # The default engine as it runs here: the kernels on in this CPU's own variant, so that
    # quantization="auto" resolves to int8 (a forced scalar variant has no int8 GEMM to pick).
    with pytest.MonkeyPatch.context() as env:
        env.delenv("ZIGGURAT_CPU_ISA", raising=False)
        return _smollm2()


@pytest.fixture(scope="module")
def smollm2_float() -> InferenceEngine:
    return _smollm2(quantization="none")


@pytest.mark.slow
def test_default_engine_on_the_default_model_runs_int8(
    smollm2_default: InferenceEngine, smollm2_float: InferenceEngine
) -> None:
    # The chat answer with this default config is checked in test_engine_smollm2.py.
    assert smollm2_default.config.quantization == "auto"
    assert smollm2_default.runner.quantization == "int8"
    layers = linears(smollm2_default.runner.model)
    assert len(layers) == 4 * 30 + 1
    assert all(isinstance(m.packed, Int8Weight) for m in layers)
    decoder = linears(smollm2_default.runner.model.model)
    assert all(
        isinstance(m.packed, Int8Weight) and m.packed.inv_smoothing is not None for m in decoder
    )
    assert smollm2_float.runner.quantization == "none"
    assert not any(isinstance(m.packed, Int8Weight) for m in linears(smollm2_float.runner.model))


@pytest.mark.slow
def test_int8_next_token_distributions_match_float_on_unseen_text(
    smollm2_default: InferenceEngine, smollm2_float: InferenceEngine
) -> None:
    ids = smollm2_default.tokenizer.encode(_EVAL_TEXT)
    assert 250 <= len(ids) <= 400
    got = full_sequence_logits(smollm2_default, ids)
    expected = full_sequence_logits(smollm2_float, ids)
    kl, top1 = kl_and_top1(expected, got)
    assert kl < 0.05, kl  # measured ~0.016
    assert top1 > 0.8, top1  # measured ~0.92
