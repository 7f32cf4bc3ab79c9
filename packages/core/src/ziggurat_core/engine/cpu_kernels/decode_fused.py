"""Fused entry points for the decode step (`csrc/decode_fused.c`): one C call where the unfused
path takes several, each the exact composition of the kernels it replaces."""

from __future__ import annotations

import ctypes

import torch

from .build import KernelError, check_float_vectors, library_wrapper
from .int8_gemm import PackedInt8Weight


class BoundInt8Linear:
    """One int8 linear layer bound to `int8_linear_f32`: float32 x [M, K] -> float32 [M, N] =
    int8_gemm(quantize(x * inv_smoothing), W) with the weight's scales and bias, the same bits
    as `Int8RowKernels.quantize` followed by `Int8Gemm`.

    The weight-side tensors are checked once here and their addresses kept: a decode step calls
    every layer's projections once, and checking them again each time was a large share of it.
    The instance holds references to them, so the addresses stay valid."""

    def __init__(
        self,
        fn: ctypes._CFuncPtr,  # type: ignore[name-defined]
        weight: PackedInt8Weight,
        col_scale: torch.Tensor,
        bias: torch.Tensor | None,
        inv_smoothing: torch.Tensor | None,
    ) -> None:
        n, k = weight.out_features, weight.in_features
        check_float_vectors(
            "int8 linear",
            (("col_scale", col_scale, n), ("bias", bias, n), ("inv_smoothing", inv_smoothing, k)),
        )
        self.in_features, self.out_features = k, n
        self._tensors = (weight.packed, weight.offset, col_scale, bias, inv_smoothing)
        self._fn = fn
        self._inv_smoothing = None if inv_smoothing is None else inv_smoothing.data_ptr()
        self._packed = weight.packed.data_ptr()
        self._offset = weight.offset.data_ptr()
        self._col_scale = col_scale.data_ptr()
        self._bias = None if bias is None else bias.data_ptr()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: 2-D float32 CPU tensor [M, in_features] with contiguous rows (any row stride)."""
        if (
            x.dtype != torch.float32
            or x.dim() != 2
            or x.shape[1] != self.in_features
            or x.stride(1) != 1
            or x.device.type != "cpu"
        ):
            raise KernelError(
                f"int8 linear: x must be float32 [M, {self.in_features}] on CPU with contiguous "
                f"rows, got {x.dtype} {tuple(x.shape)}"
            )
        rows = x.shape[0]
        out = torch.empty((rows, self.out_features), dtype=torch.float32)
        if rows == 0:
            return out
        status = self._fn(
            x.data_ptr(),
            rows,
            self.in_features,
            x.stride(0),
            self._inv_smoothing,
            self.out_features,
            self._packed,
            self._offset,
            self._col_scale,
            self._bias,
            out.data_ptr(),
            torch.get_num_threads(),
        )
        if status != 0:
            raise KernelError(f"int8 linear: the kernel failed (status {status})")
        return out


class DecodeFusedKernels:
    def __init__(self, library: ctypes.CDLL) -> None:
        p, i64 = ctypes.c_void_p, ctypes.c_int64
        fn = library.int8_linear_f32
        fn.restype = ctypes.c_int
        fn.argtypes = [p, i64, i64, i64, p, i64, p, p, p, p, p, ctypes.c_int]
        self._int8_linear = fn
        rope = library.rope_write_kv_f32
        rope.restype = ctypes.c_int
        rope.argtypes = [p, i64, i64, i64, i64, i64, p, p, p, p, p, p, ctypes.c_int, ctypes.c_int]
        self._rope_write_kv = rope

    def int8_linear(
        self,
        weight: PackedInt8Weight,
        col_scale: torch.Tensor,  # [N] float32
        bias: torch.Tensor | None,  # [N] float32
        inv_smoothing: torch.Tensor | None,  # [K] float32
    ) -> BoundInt8Linear:
        """The fused quantize + int8 GEMM for this weight (see `BoundInt8Linear`)."""
        return BoundInt8Linear(self._int8_linear, weight, col_scale, bias, inv_smoothing)

    def rope_write_kv(
        self,
        qkv: torch.Tensor,  # [tokens, (heads + 2 * kv_heads) * head_dim] float32, rows contiguous
        num_heads: int,
        cos: torch.Tensor,  # tokens * head_dim / 2 contiguous float32 values
        sin: torch.Tensor,
        slot_mapping: torch.Tensor,  # [tokens] int64
        kv_cache: torch.Tensor,  # [2, num_blocks, block_size, kv_heads, head_dim] float32/16
    ) -> torch.Tensor:
        """The rotated query heads [tokens, heads, head_dim]; the rotated keys and the values
        are stored in their cache slots. The same bits as `ElementwiseKernels.rotary` of the
        query and key views followed by `PagedAttentionKernel.write_kv`."""
        num_kv_heads, head_dim = kv_cache.shape[3], kv_cache.shape[4]
        tokens = qkv.shape[0]
        if (
            qkv.dtype != torch.float32
            or qkv.dim() != 2
            or qkv.stride(1) != 1
            or qkv.shape[1] != (num_heads + 2 * num_kv_heads) * head_dim
            or qkv.device.type != "cpu"
        ):
            raise KernelError(
                f"rope_write_kv: qkv must be float32 [tokens, {(num_heads + 2 * num_kv_heads) * head_dim}]"
                " on CPU with contiguous rows"
            )
        if kv_cache.dtype not in (torch.float32, torch.float16) or not kv_cache.is_contiguous():
            raise KernelError("rope_write_kv: kv_cache must be a contiguous float32 or float16 tensor")
        check_float_vectors(
            "rope_write_kv",
            (("cos", cos, tokens * head_dim // 2), ("sin", sin, tokens * head_dim // 2)),
        )
        if (
            slot_mapping.dtype != torch.int64
            or not slot_mapping.is_contiguous()
            or slot_mapping.numel() != tokens
        ):
            raise KernelError(f"rope_write_kv: slot_mapping must be {tokens} contiguous int64 values")
        query = torch.empty((tokens, num_heads, head_dim), dtype=torch.float32)
        status = self._rope_write_kv(
            qkv.data_ptr(),
            tokens,
            qkv.stride(0),
            num_heads,
            num_kv_heads,
            head_dim,
            cos.data_ptr(),
            sin.data_ptr(),
            query.data_ptr(),
            slot_mapping.data_ptr(),
            kv_cache[0].data_ptr(),
            kv_cache[1].data_ptr(),
            int(kv_cache.dtype == torch.float16),
            torch.get_num_threads(),
        )
        if status == 3:
            raise KernelError("this build of the kernels has no float16 support")
        if status != 0:
            raise KernelError(f"rope_write_kv: the kernel failed (status {status})")
        return query


def load_decode_fused_kernels() -> DecodeFusedKernels | None:
    """The kernels, or None where the CPU kernels cannot be built (see `build.py`)."""
    return library_wrapper(DecodeFusedKernels)
