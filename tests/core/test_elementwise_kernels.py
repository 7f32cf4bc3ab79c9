"""The fused C RMSNorm / residual-add / SwiGLU kernels against plain torch, and the layers'
use of them (cpu_kernels/elementwise.py, csrc/elementwise.c)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from ziggurat_core.engine.cpu_kernels import load_elementwise_kernels
from ziggurat_core.engine.layers import RMSNorm, SiluAndMul, apply_rotary

kernels = load_elementwise_kernels()
pytestmark = pytest.mark.skipif(kernels is None, reason="the CPU kernels did not build here")


def torch_rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x64 = x.double()
    return (x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + eps) * weight.double()).float()


@pytest.mark.parametrize("rows", [1, 5, 64, 300])  # 300 x 576 crosses the parallel threshold
def test_rmsnorm_matches_float64_reference(rows: int) -> None:
    assert kernels is not None
    x, weight = torch.randn(rows, 576) * 3, torch.randn(576)
    out = kernels.rmsnorm(x, weight, 1e-5)
    torch.testing.assert_close(out, torch_rmsnorm(x, weight, 1e-5), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [1, 64, 300])
def test_add_rmsnorm_writes_the_sum_in_place_and_normalises_it(rows: int) -> None:
    assert kernels is not None
    x, residual, weight = torch.randn(rows, 576), torch.randn(rows, 576), torch.randn(576)
    expected_sum = x + residual
    out = kernels.add_rmsnorm_(x, residual, weight, 1e-6)
    assert torch.equal(x, expected_sum)
    torch.testing.assert_close(out, torch_rmsnorm(expected_sum, weight, 1e-6), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [1, 64, 100])
def test_silu_mul_matches_torch_and_survives_extreme_gates(rows: int) -> None:
    assert kernels is not None
    gate_up = torch.randn(rows, 2 * 1536) * 4
    gate_up[0, 0], gate_up[0, 1], gate_up[0, 2] = -1000.0, 1000.0, -85.0
    out = kernels.silu_mul(gate_up)
    gate, up = gate_up.double().chunk(2, dim=-1)
    expected = (F.silu(gate) * up).float()
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-4)


def test_rows_do_not_depend_on_the_batch() -> None:
    assert kernels is not None
    x, weight = torch.randn(300, 576), torch.randn(576)
    gate_up = torch.randn(300, 2 * 1536)
    full_norm, full_silu = kernels.rmsnorm(x, weight, 1e-5), kernels.silu_mul(gate_up)
    for row in (0, 17, 299):
        assert torch.equal(
            kernels.rmsnorm(x[row : row + 1].clone(), weight, 1e-5)[0], full_norm[row]
        )
        assert torch.equal(kernels.silu_mul(gate_up[row : row + 1].clone())[0], full_silu[row])


def test_layers_use_the_kernels_only_where_they_fit() -> None:
    norm = RMSNorm(64, eps=1e-5)
    norm.weight.data = torch.randn(64)
    x, residual = torch.randn(6, 64), torch.randn(6, 64)
    torch.testing.assert_close(norm(x), torch_rmsnorm(x, norm.weight, 1e-5), rtol=1e-5, atol=1e-5)
    # 3-D and non-contiguous inputs take the torch path, with the same results.
    x3 = torch.randn(2, 3, 64)
    torch.testing.assert_close(norm(x3), torch_rmsnorm(x3, norm.weight, 1e-5), rtol=1e-5, atol=1e-5)
    strided = torch.randn(64, 6).t()
    torch.testing.assert_close(
        norm(strided), torch_rmsnorm(strided, norm.weight, 1e-5), rtol=1e-5, atol=1e-5
    )
    summed = x + residual
    normed, returned_sum = norm.add_and_norm(x, residual)
    assert returned_sum.data_ptr() == x.data_ptr() and torch.equal(returned_sum, summed)
    torch.testing.assert_close(
        normed, torch_rmsnorm(summed, norm.weight, 1e-5), rtol=1e-5, atol=1e-5
    )
    gate_up = torch.randn(4, 128)
    gate, up = gate_up.chunk(2, dim=-1)
    torch.testing.assert_close(SiluAndMul()(gate_up), F.silu(gate) * up, rtol=1e-5, atol=1e-6)
    half = gate_up.bfloat16()
    assert SiluAndMul()(half).dtype == torch.bfloat16  # torch path keeps the dtype


def torch_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    first, second = x.double().chunk(2, dim=-1)
    c, s = cos.double(), sin.double()
    return torch.cat((first * c - second * s, second * c + first * s), dim=-1).float()


@pytest.mark.parametrize("tokens", [1, 7, 300])
def test_rotary_on_a_view_of_the_fused_projection(tokens: int) -> None:
    assert kernels is not None
    heads, kv_heads, head_dim = 9, 3, 64
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim)
    q = qkv[:, : heads * head_dim].view(tokens, heads, head_dim)  # rows qkv.shape[1] apart
    k = qkv[:, heads * head_dim : (heads + kv_heads) * head_dim].view(tokens, kv_heads, head_dim)
    angles = torch.rand(tokens, head_dim // 2) * 100
    cos, sin = angles.cos().unsqueeze(1), angles.sin().unsqueeze(1)  # as RotaryEmbedding.cos_sin
    for x in (q, k):
        out = apply_rotary(x, cos, sin)
        assert out.is_contiguous() and out.shape == x.shape
        torch.testing.assert_close(out, torch_rotary(x, cos, sin), rtol=1e-5, atol=1e-5)
    # A layout the kernel does not take (heads not adjacent) still gives the same numbers.
    strided = torch.randn(tokens, head_dim, heads).permute(0, 2, 1)
    torch.testing.assert_close(
        apply_rotary(strided, cos, sin), torch_rotary(strided, cos, sin), rtol=1e-5, atol=1e-5
    )
