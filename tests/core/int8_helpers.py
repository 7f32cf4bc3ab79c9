"""Shared by the int8 kernel tests: random operands, exact references in torch, and the int8
GEMM of one instruction-set variant (built with ZIGGURAT_CPU_ISA)."""

from __future__ import annotations

import pytest
import torch
from ziggurat_core.engine.cpu_kernels import Int8Gemm, load_int8_gemm, native_isa
from ziggurat_core.engine.cpu_kernels.build import _RUNNABLE


def runnable_isas() -> list[str]:
    """The variants this CPU and compiler can build, best first (none without a compiler)."""
    native = native_isa()
    return [] if native is None else list(_RUNNABLE[native])


def load_gemm(isa: str) -> Int8Gemm:
    """The int8 GEMM of the library built for `isa`; skips where the CPU kernels are off."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ZIGGURAT_CPU_ISA", isa)
        gemm = load_int8_gemm()
    if gemm is None:
        pytest.skip("the CPU kernels are unavailable: no compiler, failed build or turned off")
    assert gemm.isa == isa
    return gemm


def gemm_input(gemm: Int8Gemm, x: torch.Tensor) -> torch.Tensor:
    """Signed int8 activations in the form `gemm` takes (x + 128 as uint8 for VNNI)."""
    if gemm.input_offset == 0:
        return x
    return (x.to(torch.int16) + gemm.input_offset).to(torch.uint8)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_int8(*shape: int, seed: int, low: int = -127) -> torch.Tensor:
    """Uniform int8 in [low, 127]."""
    return torch.randint(low, 128, shape, generator=generator(seed), dtype=torch.int8)


def exact_product(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [M, K] int8 @ weight [N, K] int8 ^T in int64: [M, N]."""
    return x.to(torch.int64) @ weight.to(torch.int64).t()


def scales_and_bias(m: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """row_scale [m, 1], col_scale [n] (two decades each) and bias [n] of the outputs' size."""
    gen = generator(seed)
    row_scale = 10 ** (torch.rand(m, 1, generator=gen) * 2 - 4)
    col_scale = 10 ** (torch.rand(n, generator=gen) * 2 - 4)
    bias = torch.randn(n, generator=gen) * 1e-3
    return row_scale, col_scale, bias


def assert_within_float32_epilogue(
    got: torch.Tensor,
    product: torch.Tensor,
    row_scale: torch.Tensor,
    col_scale: torch.Tensor,
    bias: torch.Tensor | None,
) -> None:
    """got ~= product * row_scale * col_scale (+ bias) to 1e-6 of |scaled| + |bias| (float64):
    a few float32 roundings (|error| <= ~4 * 2^-24 of that)."""
    scaled = product.double() * row_scale.double().reshape(-1, 1) * col_scale.double()[None, :]
    expected = scaled if bias is None else scaled + bias.double()[None, :]
    magnitude = scaled.abs() if bias is None else scaled.abs() + bias.double().abs()[None, :]
    error = (got.double() - expected).abs()
    worst = float((error / magnitude.clamp(min=1e-30)).max()) if error.numel() else 0.0
    assert bool((error <= 1e-6 * magnitude).all()), f"relative error {worst:.3g}"
