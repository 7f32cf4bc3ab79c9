"""`Linear.pack` / `pack_linears`: a packed Linear computes what F.linear computes on the dense
weight it replaced, drops that weight, and leaves a weight tied to the embedding intact."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from ziggurat_core.engine.config import ModelConfig
from ziggurat_core.engine.layers import Linear, PackFormat, pack_linears
from ziggurat_core.engine.layers.packed import Int8Weight, OneDnnWeight
from ziggurat_core.engine.models.llama import LlamaForCausalLM

needs_onednn = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN"
)


def random_linear(in_features: int, out_features: int, bias: bool = False, seed: int = 0) -> Linear:
    """A `Linear` with N(0, 1/in_features) weights (outputs of order 1) and N(0, 1) bias."""
    generator = torch.Generator().manual_seed(seed)
    layer = Linear(in_features, out_features, bias=bias)
    with torch.no_grad():
        assert layer.weight is not None
        layer.weight.copy_(torch.randn(out_features, in_features, generator=generator))
        layer.weight.div_(in_features**0.5)
        if layer.bias is not None:
            layer.bias.copy_(torch.randn(out_features, generator=generator))
    return layer


def _dense(layer: Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Copies of the dense weight and bias (they are dropped by `pack`)."""
    assert layer.weight is not None
    bias = None if layer.bias is None else layer.bias.detach().clone()
    return layer.weight.detach().clone(), bias


@needs_onednn
@pytest.mark.parametrize("rows", [1, 7, 64])
@pytest.mark.parametrize("bias", [False, True])
def test_onednn_packed_linear_equals_f_linear(rows: int, bias: bool) -> None:
    layer = random_linear(96, 256, bias=bias)
    weight, b = _dense(layer)
    x = torch.randn(rows, 96, generator=torch.Generator().manual_seed(1))
    expected = F.linear(x, weight, b)

    layer.pack("onednn")

    assert isinstance(layer.packed, OneDnnWeight)
    assert layer.weight is None and layer.bias is None
    got = layer(x)
    assert got.shape == (rows, 256) and got.dtype == torch.float32
    # Same float32 numbers, only the summation order differs.
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@needs_onednn
def test_onednn_gemm_shapes_stay_few_whatever_the_row_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """oneDNN caches a primitive per input shape: a server seeing every step size would grow
    its heap by one primitive per row count (the soak), so row counts go to a few buckets."""
    layer = random_linear(32, 48, bias=True)
    weight, b = _dense(layer)
    layer.pack("onednn")
    seen: set[int] = set()
    real = torch._C._nn.mkldnn_linear

    def spy(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        seen.add(x.size(0))
        return real(x, w, bias)

    monkeypatch.setattr(torch._C._nn, "mkldnn_linear", spy)
    gen = torch.Generator().manual_seed(3)
    for rows in range(1, 300):
        x = torch.randn(rows, 32, generator=gen)
        got = layer(x)
        assert got.shape == (rows, 48)
        torch.testing.assert_close(got, F.linear(x, weight, b), rtol=1e-4, atol=1e-5)
    # 1..8 each, 16..64 by 8, then 128..320 by 64.
    assert seen == {*range(1, 9), *range(16, 65, 8), *range(128, 321, 64)}


@needs_onednn
def test_onednn_packed_linear_takes_3d_input() -> None:
    layer = random_linear(32, 48, bias=True)
    weight, b = _dense(layer)
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(2))
    layer.pack("onednn")
    got = layer(x)
    assert got.shape == (2, 5, 48)
    torch.testing.assert_close(got, F.linear(x, weight, b), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fmt", ["onednn", "int8"])
def test_packing_twice_raises(fmt: PackFormat) -> None:
    if fmt == "onednn" and not torch.backends.mkldnn.is_available():
        pytest.skip("torch built without oneDNN")
    layer = random_linear(16, 8)
    layer.pack(fmt)
    with pytest.raises(RuntimeError, match="already packed"):
        layer.pack(fmt)
    with pytest.raises(RuntimeError, match="already packed"):
        layer.pack("int8")


def test_refused_packing_leaves_the_layer_dense_and_working() -> None:
    layer = random_linear(16, 8).to(torch.bfloat16)
    weight, _ = _dense(layer)
    x = torch.randn(3, 16).to(torch.bfloat16)
    with pytest.raises(ValueError, match="float32"):
        layer.pack("onednn")
    with pytest.raises(ValueError, match="unknown weight format"):
        layer.pack("fp4")  # type: ignore[arg-type]
    float_layer = random_linear(16, 8)
    with pytest.raises(ValueError, match="int8 packing only"):
        float_layer.pack("onednn", smoothing=torch.ones(16))
    assert float_layer.packed is None and float_layer.weight is not None
    assert layer.packed is None and layer.weight is not None
    torch.testing.assert_close(layer(x), F.linear(x, weight))


def test_pack_linears_counts_and_skips_what_it_cannot_pack() -> None:
    with torch.device("meta"):
        on_meta = Linear(8, 8)
    model = nn.Sequential(
        random_linear(8, 16, seed=1),
        random_linear(16, 8, bias=True, seed=2),
        random_linear(8, 8, seed=3).to(torch.bfloat16),
        on_meta,
        nn.Linear(8, 8),  # torch's own Linear is not ours to pack
    )
    expected_onednn = 2 if torch.backends.mkldnn.is_available() else 0

    assert pack_linears(model, "onednn") == expected_onednn
    assert model[2].packed is None and model[2].weight is not None  # bfloat16: skipped
    assert model[3].packed is None  # not on the CPU
    assert isinstance(model[4].weight, nn.Parameter)
    if expected_onednn:
        assert isinstance(model[0].packed, OneDnnWeight) and model[0].weight is None
        assert isinstance(model[1].packed, OneDnnWeight) and model[1].bias is None
    assert pack_linears(model, "onednn") == 0  # nothing left that oneDNN can take

    # int8 takes any float dtype, and never repacks a packed layer.
    bf16_weight, _ = _dense(model[2])
    assert pack_linears(model, "int8") == 3 - expected_onednn
    assert isinstance(model[2].packed, Int8Weight) and model[2].weight is None
    x = torch.randn(4, 8).to(torch.bfloat16)
    out = model[2](x)
    assert out.dtype == torch.bfloat16
    reference = F.linear(x.float(), bf16_weight.float())
    # int8 error is ~1% of the output (see test_int8_quantization.py) on top of bfloat16 rounding.
    assert float((out.float() - reference).norm() / reference.norm()) < 0.05
    assert pack_linears(model, "int8") == 0


def _tied_model() -> LlamaForCausalLM:
    config = ModelConfig(
        architecture="llama",
        vocab_size=50,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) / param.shape[-1] ** 0.5)
    return model


@pytest.mark.parametrize("fmt", ["onednn", "int8"])
def test_tied_lm_head_packed_leaves_the_embedding_intact(fmt: PackFormat) -> None:
    if fmt == "onednn" and not torch.backends.mkldnn.is_available():
        pytest.skip("torch built without oneDNN")
    model = _tied_model()
    embedding = model.model.embed_tokens
    assert model.lm_head.weight is embedding.weight
    table = embedding.weight.detach().clone()
    hidden = torch.randn(6, 32, generator=torch.Generator().manual_seed(5))

    linears = [m for m in model.modules() if isinstance(m, Linear)]
    assert pack_linears(model, fmt) == len(linears) == 5  # qkv, o, gate_up, down, lm_head

    assert model.lm_head.weight is None
    assert isinstance(embedding.weight, nn.Parameter)
    assert torch.equal(embedding.weight, table)
    ids = torch.tensor([0, 7, 49, 7])
    assert torch.equal(embedding(ids), table[ids])
    logits = model.compute_logits(hidden)
    expected = F.linear(hidden, table)
    if fmt == "onednn":
        torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
    else:
        assert float((logits - expected).norm() / expected.norm()) < 0.03
