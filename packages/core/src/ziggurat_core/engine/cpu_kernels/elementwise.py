"""Fused RMSNorm (with the residual add) and SwiGLU for float32 CPU rows (`csrc/elementwise.c`)."""

from __future__ import annotations

import ctypes

import torch

from .build import library_wrapper


def fits(x: torch.Tensor, dim: int = 2) -> bool:
    """Whether the kernels take `x`: a contiguous float32 CPU tensor of `dim` dimensions."""
    return (
        x.dtype == torch.float32 and x.dim() == dim and x.device.type == "cpu" and x.is_contiguous()
    )


class ElementwiseKernels:
    """Callers check `fits` on every tensor argument; the kernels trust them."""

    def __init__(self, library: ctypes.CDLL) -> None:
        p, i64, f32, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
        self._rmsnorm = library.rmsnorm_f32
        self._rmsnorm.argtypes = [p, p, i64, i64, f32, p, i32]
        self._add_rmsnorm = library.add_rmsnorm_f32
        self._add_rmsnorm.argtypes = [p, p, p, i64, i64, f32, p, i32]
        self._silu_mul = library.silu_mul_f32
        self._silu_mul.argtypes = [p, i64, i64, p, i32]
        self._rotary = library.rotary_f32
        self._rotary.argtypes = [p, i64, i64, i64, i64, p, p, p, i32]
        for fn in (self._rmsnorm, self._add_rmsnorm, self._silu_mul, self._rotary):
            fn.restype = None

    def rmsnorm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        out = torch.empty_like(x)
        rows, cols = x.shape
        self._rmsnorm(
            x.data_ptr(),
            weight.data_ptr(),
            rows,
            cols,
            eps,
            out.data_ptr(),
            torch.get_num_threads(),
        )
        return out

    def add_rmsnorm_(
        self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> torch.Tensor:
        """x += residual in place; returns rmsnorm(x)."""
        out = torch.empty_like(x)
        rows, cols = x.shape
        self._add_rmsnorm(
            x.data_ptr(),
            residual.data_ptr(),
            weight.data_ptr(),
            rows,
            cols,
            eps,
            out.data_ptr(),
            torch.get_num_threads(),
        )
        return out

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """[n, 2h] -> [n, h]: silu(gate) * up."""
        rows, width = gate_up.shape
        out = torch.empty((rows, width // 2), dtype=torch.float32)
        self._silu_mul(
            gate_up.data_ptr(), rows, width // 2, out.data_ptr(), torch.get_num_threads()
        )
        return out

    def rotary(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [tokens, heads, head_dim] float32 with each head's values contiguous and heads
        adjacent (x.stride(1) == head_dim, any token stride); cos, sin: `tokens * head_dim / 2`
        contiguous float32 values. Returns the rotated heads, contiguous."""
        tokens, heads, head_dim = x.shape
        out = torch.empty((tokens, heads, head_dim), dtype=torch.float32)
        self._rotary(
            x.data_ptr(),
            tokens,
            heads,
            head_dim,
            x.stride(0),
            cos.data_ptr(),
            sin.data_ptr(),
            out.data_ptr(),
            torch.get_num_threads(),
        )
        return out


def load_elementwise_kernels() -> ElementwiseKernels | None:
    """The kernels, or None where the CPU kernels cannot be built (see `build.py`)."""
    return library_wrapper(ElementwiseKernels)
