"""The fused decode entry points (csrc/decode_fused.c) against the kernels they fuse, bitwise:
- `Int8Gemm.bind` (quantize + int8 GEMM in one call) against `Int8RowKernels.quantize` then
  `Int8Gemm` of the same variant, for every variant this machine runs;
- `DecodeFusedKernels.rope_write_kv` against `ElementwiseKernels.rotary` of the query and key
  heads then `PagedAttentionKernel.write_kv`, over float32 and float16 caches;
- the torch backend's `forward_fused_qkv` against rotating and calling `forward`.
Each reference comes from the same library as the fused kernel (the one ZIGGURAT_CPU_ISA selects),
not from the layers' kernels, which a test that ran earlier in the process may have loaded for
another variant: the scalar build rounds RoPE differently (no fused multiply-add).
Row counts cross the C code's stack scratch size, so its heap path runs too.
"""

from __future__ import annotations

import pytest
import torch
from int8_helpers import generator, load_gemm, runnable_isas
from ziggurat_core.engine.attention.base import StepLayout
from ziggurat_core.engine.attention.torch_backend import PortableAttentionBackend
from ziggurat_core.engine.cpu_kernels import (
    DecodeFusedKernels,
    ElementwiseKernels,
    Int8Gemm,
    Int8RowKernels,
    KernelError,
    PackedInt8Weight,
    load_decode_fused_kernels,
    load_elementwise_kernels,
    load_int8_row_kernels,
    load_paged_attention_kernel,
)


@pytest.fixture(scope="module", params=runnable_isas())
def gemm_and_rows(request: pytest.FixtureRequest) -> tuple[Int8Gemm, Int8RowKernels]:
    gemm = load_gemm(request.param)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ZIGGURAT_CPU_ISA", request.param)
        rows = load_int8_row_kernels()
    assert rows is not None
    return gemm, rows


@pytest.fixture(scope="module")
def rotary() -> ElementwiseKernels:
    kernels = load_elementwise_kernels()
    if kernels is None:
        pytest.skip("the CPU kernels are unavailable: no compiler, failed build or turned off")
    return kernels


@pytest.fixture(scope="module")
def fused() -> DecodeFusedKernels:
    kernels = load_decode_fused_kernels()
    if kernels is None:
        pytest.skip("the CPU kernels are unavailable: no compiler, failed build or turned off")
    return kernels


@pytest.mark.parametrize("m", [1, 3, 17, 300])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("smoothed", [False, True])
def test_bound_int8_linear_is_quantize_then_gemm_bitwise(
    gemm_and_rows: tuple[Int8Gemm, Int8RowKernels], m: int, with_bias: bool, smoothed: bool
) -> None:
    gemm, rows = gemm_and_rows
    n, k = 70, 100  # neither a multiple of the packed tile; 300 rows exceed the stack scratch
    gen = generator(m * 4 + with_bias * 2 + smoothed)
    weight = PackedInt8Weight(torch.randint(-128, 128, (n, k), generator=gen, dtype=torch.int8))
    col_scale = torch.rand(n, generator=gen) * 1e-2
    bias = torch.randn(n, generator=gen) if with_bias else None
    inv_smoothing = torch.rand(k, generator=gen) + 0.5 if smoothed else None
    # Rows of a wider tensor: the fused call takes any row stride.
    wide = torch.randn(m, k + 28, generator=gen) * (10 ** torch.linspace(-3, 3, m))[:, None]
    x = wide[:, 5 : 5 + k]
    bound = gemm.bind(weight, col_scale, bias, inv_smoothing)

    got = bound(x)

    qx, row_scale = rows.quantize(x.contiguous(), inv_smoothing, unsigned=gemm.input_offset != 0)
    assert torch.equal(got, gemm(qx, row_scale, weight, col_scale, bias))
    assert bound.isa == gemm.isa


def test_bound_int8_linear_checks_its_inputs(
    gemm_and_rows: tuple[Int8Gemm, Int8RowKernels],
) -> None:
    gemm, _ = gemm_and_rows
    weight = PackedInt8Weight(torch.ones(16, 8, dtype=torch.int8))
    with pytest.raises(KernelError, match="col_scale"):
        gemm.bind(weight, torch.ones(15), None, None)
    with pytest.raises(KernelError, match="inv_smoothing"):
        gemm.bind(weight, torch.ones(16), None, torch.ones(8, dtype=torch.float64))
    bound = gemm.bind(weight, torch.ones(16), None, None)
    assert bound(torch.zeros(0, 8)).shape == (0, 16)
    for bad in (torch.ones(2, 7), torch.ones(2, 8, dtype=torch.float64), torch.ones(8, 2).t(), torch.ones(8)):
        with pytest.raises(KernelError, match="int8 linear"):
            bound(bad)


def _qkv(tokens: int, heads: int, kv_heads: int, head_dim: int, seed: int) -> torch.Tensor:
    """A fused projection output as a view with a wider row stride."""
    width = (heads + 2 * kv_heads) * head_dim
    return torch.randn(tokens, width + 16, generator=generator(seed))[:, :width]


@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("tokens", [1, 40])
def test_rope_write_kv_is_rotary_then_write_kv_bitwise(
    fused: DecodeFusedKernels, rotary: ElementwiseKernels, cache_dtype: torch.dtype, tokens: int
) -> None:
    paged = load_paged_attention_kernel()
    assert paged is not None
    if cache_dtype not in paged.cache_dtypes:
        pytest.skip("this build of the kernels has no float16 cache")
    heads, kv_heads, head_dim, block_size = 9, 3, 64, 16
    qkv = _qkv(tokens, heads, kv_heads, head_dim, seed=tokens)
    angles = torch.rand(tokens, head_dim // 2, generator=generator(7)) * 100
    cos, sin = angles.cos().unsqueeze(1), angles.sin().unsqueeze(1)
    slots = torch.randperm(8 * block_size, generator=generator(8))[:tokens]
    cache = torch.randn(2, 8, block_size, kv_heads, head_dim).to(cache_dtype)
    expected_cache = cache.clone()

    query = fused.rope_write_kv(qkv, heads, cos, sin, slots, cache)

    q_size, kv_size = heads * head_dim, kv_heads * head_dim
    q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
    key = rotary.rotary(k.view(tokens, kv_heads, head_dim), cos, sin)
    paged.write_kv(key, v.view(tokens, kv_heads, head_dim), slots, expected_cache)
    assert torch.equal(query, rotary.rotary(q.view(tokens, heads, head_dim), cos, sin))
    assert torch.equal(cache, expected_cache)


def test_rope_write_kv_checks_its_inputs(fused: DecodeFusedKernels) -> None:
    qkv = _qkv(2, 3, 1, 8, seed=1)
    cos = sin = torch.ones(2, 1, 4)
    slots = torch.tensor([0, 1])
    cache = torch.zeros(2, 1, 4, 1, 8)
    with pytest.raises(KernelError, match="qkv"):
        fused.rope_write_kv(qkv, 4, cos, sin, slots, cache)  # 4 heads do not fit the width
    with pytest.raises(KernelError, match="cos"):
        fused.rope_write_kv(qkv, 3, torch.ones(2, 1, 3), sin, slots, cache)
    with pytest.raises(KernelError, match="slot_mapping"):
        fused.rope_write_kv(qkv, 3, cos, sin, slots.int(), cache)
    with pytest.raises(KernelError, match="kv_cache"):
        fused.rope_write_kv(qkv, 3, cos, sin, slots, cache.double())
    assert torch.equal(cache, torch.zeros_like(cache))


@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.float16])
def test_backend_forward_fused_qkv_matches_rotate_then_forward(
    fused: DecodeFusedKernels, rotary: ElementwiseKernels, cache_dtype: torch.dtype
) -> None:
    heads, kv_heads, head_dim, block_size = 6, 2, 32, 8
    # A decode at context 12, a prefill of 5 after 3 cached tokens, a decode at context 1.
    layout = StepLayout([1, 5, 1], [12, 8, 1], [[3, 0], [5], [1]], block_size)
    tokens = layout.num_tokens
    qkv = _qkv(tokens, heads, kv_heads, head_dim, seed=3)
    positions = torch.tensor([11, 3, 4, 5, 6, 7, 0])
    angles = positions[:, None].float() * torch.rand(head_dim // 2, generator=generator(4))
    cos, sin = angles.cos().unsqueeze(1), angles.sin().unsqueeze(1)
    cache = torch.randn(2, 6, block_size, kv_heads, head_dim, generator=generator(5)).to(cache_dtype)
    unfused_cache = cache.clone()
    backend = PortableAttentionBackend()
    metadata = backend.prepare(layout, torch.device("cpu"))

    got = backend.forward_fused_qkv(qkv, cos, sin, heads, cache, metadata, 0.2)

    q, k, v = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    q = rotary.rotary(q.view(tokens, heads, head_dim), cos, sin)
    k = rotary.rotary(k.view(tokens, kv_heads, head_dim), cos, sin)
    expected = backend.forward(
        q, k, v.view(tokens, kv_heads, head_dim), unfused_cache, metadata, 0.2
    )
    paged = load_paged_attention_kernel()
    if paged is None or cache_dtype not in paged.cache_dtypes:  # the torch path stays unfused
        assert got is None
        return
    assert got is not None
    assert torch.equal(got, expected)
    assert torch.equal(cache, unfused_cache)
