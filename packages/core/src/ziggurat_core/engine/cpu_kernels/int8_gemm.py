"""int8 GEMM from a packed weight, scales and bias applied (`csrc/int8_gemm.h`): one entry
point over the instruction-set variant the library was built for, and the portable reference."""

from __future__ import annotations

import ctypes
from typing import Any

import torch

from .build import KernelError, check_float_vectors, library_wrapper
from .weight_memory import huge_page_copy

# The packed layout's block: 16 outputs x 4 consecutive inputs.
_TILE_OUTPUTS, _GROUP_INPUTS = 16, 4


class PackedInt8Weight:
    """An int8 weight [N, K] in the GEMM's layout: [ceil(N/16), ceil(K/4), 16, 4], zero past N
    and K, plus `offset` [2, N], the variants' corrections (`csrc/int8_gemm.h`): 128 * the row
    sums (for unsigned activations), then the magnitudes of each row's negative weights summed
    (for the AVX2 variant's sign mask)."""

    def __init__(self, qweight: torch.Tensor) -> None:
        if qweight.dtype != torch.int8 or qweight.dim() != 2 or min(qweight.shape) == 0:
            raise KernelError(
                f"int8 packing needs a non-empty 2-D int8 weight, got {qweight.dtype} "
                f"{tuple(qweight.shape)}"
            )
        n, k = qweight.shape
        self.out_features, self.in_features = n, k
        tiles, groups = -(-n // _TILE_OUTPUTS), -(-k // _GROUP_INPUTS)
        padded = qweight.contiguous()
        if (tiles * _TILE_OUTPUTS, groups * _GROUP_INPUTS) != (n, k):
            padded = torch.zeros((tiles * _TILE_OUTPUTS, groups * _GROUP_INPUTS), dtype=torch.int8)
            padded[:n, :k] = qweight
        # Groups of 4 consecutive inputs move together: permute them as int32 (one element per
        # group instead of four single bytes), then look at the result as bytes again.
        words = padded.view(torch.int32).reshape(tiles, _TILE_OUTPUTS, groups)
        # (flatten: a size-1 dimension may keep an odd stride, which `view` refuses), then
        # into memory with 2 MiB pages, which the GEMM's far-apart tile reads need
        # (`weight_memory.py`).
        self.packed = huge_page_copy(
            words.permute(0, 2, 1)
            .contiguous()
            .flatten()
            .view(torch.int8)
            .view(tiles, groups, _TILE_OUTPUTS, _GROUP_INPUTS)
        )
        row_sums = qweight.sum(dim=1, dtype=torch.int32)
        negative_sums = (-qweight.clamp(max=0).to(torch.int32)).sum(dim=1, dtype=torch.int32)
        self.offset = torch.stack([row_sums * 128, negative_sums]).contiguous()

    def unpack(self) -> torch.Tensor:
        """The int8 weight [N, K] this layout holds."""
        tiles, groups = self.packed.shape[:2]
        words = self.packed.view(torch.int32).reshape(tiles, groups, _TILE_OUTPUTS)
        rows = words.permute(0, 2, 1).contiguous().flatten().view(torch.int8)
        return rows.reshape(tiles * _TILE_OUTPUTS, groups * _GROUP_INPUTS)[
            : self.out_features, : self.in_features
        ]


_ARGTYPES: list[Any] = [
    ctypes.c_void_p,  # x
    ctypes.c_void_p,  # row_scale
    ctypes.c_int64,  # M
    ctypes.c_int64,  # K
    ctypes.c_int64,  # N
    ctypes.c_void_p,  # packed
    ctypes.c_void_p,  # offset (int8_gemm only)
    ctypes.c_void_p,  # col_scale
    ctypes.c_void_p,  # bias or NULL
    ctypes.c_void_p,  # out
    ctypes.c_int,  # num_threads
]


class BoundInt8Linear:
    """One int8 linear layer bound to `int8_linear_f32` (`csrc/decode_fused.c`): float32 x [M, K] -> float32 [M, N] =
    int8_gemm(quantize(x * inv_smoothing), W) with the weight's scales and bias, the same bits
    as `Int8RowKernels.quantize` followed by `Int8Gemm`.

    The weight-side tensors are checked once here and their addresses kept: a decode step calls
    every layer's projections once, and checking them again each time was a large share of it.
    The instance holds references to them, so the addresses stay valid."""

    def __init__(
        self,
        fn: Any,  # the library's int8_linear_f32
        library: ctypes.CDLL,
        isa: str,
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
        self.library = library  # the library `fn` belongs to, which packed the weight
        self.isa = isa  # its variant
        self._tensors = (weight.packed, weight.offset, col_scale, bias, inv_smoothing)
        self._fn = fn
        self._inv_smoothing = None if inv_smoothing is None else inv_smoothing.data_ptr()
        self._packed = weight.packed.data_ptr()
        self._offset = weight.offset.data_ptr()
        self._col_scale = col_scale.data_ptr()
        self._bias = None if bias is None else bias.data_ptr()

    def pointers(self) -> tuple[int, int, int, int | None, int | None]:
        """(packed, offset, col_scale, bias, inv_smoothing) addresses, as `int8_linear_f32`
        takes them (for callers that run this layer inside a larger C call; valid while this
        instance lives)."""
        return self._packed, self._offset, self._col_scale, self._bias, self._inv_smoothing

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


class Int8Gemm:
    """`int8_gemm` of the loaded library. `input_offset` 0: it takes signed int8 activations;
    128: activations + 128 as uint8 (`Int8RowKernels.quantize(unsigned=True)` makes them)."""

    def __init__(self, library: ctypes.CDLL) -> None:
        isa = library.ziggurat_cpu_isa
        isa.restype = ctypes.c_char_p
        self.isa = str(isa().decode())  # the variant `int8_gemm` dispatches to (build.ISAS)
        self.library = library
        offset = library.int8_gemm_input_offset
        offset.restype = ctypes.c_int
        self.input_offset = int(offset())
        self.input_dtype = torch.int8 if self.input_offset == 0 else torch.uint8
        fn = library.int8_gemm
        fn.restype = ctypes.c_int
        fn.argtypes = _ARGTYPES
        reference = library.int8_gemm_reference
        reference.restype = ctypes.c_int
        reference.argtypes = [arg for i, arg in enumerate(_ARGTYPES) if i != 6]
        self._fn = fn
        self._reference = reference
        p, i64 = ctypes.c_void_p, ctypes.c_int64
        linear = library.int8_linear_f32
        linear.restype = ctypes.c_int
        linear.argtypes = [p, i64, i64, i64, p, i64, p, p, p, p, p, ctypes.c_int]
        self._linear = linear

    def bind(
        self,
        weight: PackedInt8Weight,
        col_scale: torch.Tensor,  # [N] float32
        bias: torch.Tensor | None,  # [N] float32
        inv_smoothing: torch.Tensor | None,  # [K] float32
    ) -> BoundInt8Linear:
        """This library's quantize + GEMM in one call for one weight (see `BoundInt8Linear`)."""
        return BoundInt8Linear(
            self._linear, self.library, self.isa, weight, col_scale, bias, inv_smoothing
        )

    def __call__(
        self,
        qx: torch.Tensor,  # [M, K] `input_dtype`
        row_scale: torch.Tensor,  # [M] or [M, 1] float32
        weight: PackedInt8Weight,
        col_scale: torch.Tensor,  # [N] float32
        bias: torch.Tensor | None,  # [N] float32
    ) -> torch.Tensor:
        """float32 [M, N] = (qx @ W^T) * row_scale * col_scale (+ bias)."""
        return self._run(self._fn, self.input_dtype, qx, row_scale, weight, col_scale, bias)

    def reference(
        self,
        qx: torch.Tensor,  # [M, K] int8
        row_scale: torch.Tensor,
        weight: PackedInt8Weight,
        col_scale: torch.Tensor,
        bias: torch.Tensor | None,
    ) -> torch.Tensor:
        """The same product from the portable scalar reference (signed activations)."""
        return self._run(self._reference, torch.int8, qx, row_scale, weight, col_scale, bias)

    def _run(
        self,
        fn: Any,
        dtype: torch.dtype,
        qx: torch.Tensor,
        row_scale: torch.Tensor,
        weight: PackedInt8Weight,
        col_scale: torch.Tensor,
        bias: torch.Tensor | None,
    ) -> torch.Tensor:
        """Check the inputs, then call `fn` (the dispatched GEMM, or the reference, which takes
        no `offset` argument)."""
        out = self._checked_output(qx, dtype, row_scale, weight, col_scale, bias)
        if out.numel() == 0:
            return out
        offset = [weight.offset.data_ptr()] if fn is self._fn else []
        self._status(
            fn(
                qx.data_ptr(),
                row_scale.data_ptr(),
                qx.shape[0],
                weight.in_features,
                weight.out_features,
                weight.packed.data_ptr(),
                *offset,
                col_scale.data_ptr(),
                None if bias is None else bias.data_ptr(),
                out.data_ptr(),
                torch.get_num_threads(),
            )
        )
        return out

    @staticmethod
    def _checked_output(
        qx: torch.Tensor,
        dtype: torch.dtype,
        row_scale: torch.Tensor,
        weight: PackedInt8Weight,
        col_scale: torch.Tensor,
        bias: torch.Tensor | None,
    ) -> torch.Tensor:
        """The empty output [M, N], after checking every input the C code will read."""
        if qx.dim() != 2 or qx.device.type != "cpu":
            raise KernelError("int8 GEMM: x must be a 2-D CPU tensor")
        m, k = qx.shape
        n = weight.out_features
        if qx.dtype != dtype or not qx.is_contiguous() or k != weight.in_features:
            raise KernelError(
                f"int8 GEMM: x must be contiguous {dtype} [M, {weight.in_features}]"
            )
        check_float_vectors(
            "int8 GEMM",
            (("row_scale", row_scale, m), ("col_scale", col_scale, n), ("bias", bias, n)),
        )
        return torch.empty((m, n), dtype=torch.float32)

    @staticmethod
    def _status(status: int) -> None:
        if status != 0:
            raise KernelError(f"int8 GEMM: the kernel refused the shape (status {status})")


def load_int8_gemm() -> Int8Gemm | None:
    """The kernel where the CPU library builds (every variant has one), else None."""
    return library_wrapper(Int8Gemm)
