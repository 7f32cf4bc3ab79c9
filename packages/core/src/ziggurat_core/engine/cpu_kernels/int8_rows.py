"""Per-row int8 quantisation and int32 -> float rescaling in one pass each (`csrc/int8_rows.c`)."""

from __future__ import annotations

import ctypes

import torch

from .build import KernelError, check_float_vectors, library_wrapper


class Int8RowKernels:
    def __init__(self, library: ctypes.CDLL) -> None:
        quantize = library.quantize_rows_s8
        quantize.restype = None
        quantize.argtypes = [
            ctypes.c_void_p,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int,
        ]
        dequantize = library.dequantize_rows_s32
        dequantize.restype = None
        dequantize.argtypes = [
            ctypes.c_void_p,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int,
        ]
        quantize_unsigned = library.quantize_rows_u8
        quantize_unsigned.restype = None
        quantize_unsigned.argtypes = quantize.argtypes
        self._quantize = quantize
        self._quantize_unsigned = quantize_unsigned
        self._dequantize = dequantize

    def quantize(
        self, x: torch.Tensor, inv_smoothing: torch.Tensor | None, unsigned: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [n, k] float32 (rows contiguous) -> (int8 [n, k], scales [n, 1]) with
        x * inv_smoothing ~= q * scale row by row. `unsigned`: q + 128 as uint8 instead (the
        input of `Int8Gemm`)."""
        if x.dtype != torch.float32 or x.dim() != 2 or x.stride(1) != 1 or x.device.type != "cpu":
            raise KernelError("quantize: x must be a 2-D float32 CPU tensor with contiguous rows")
        rows, cols = x.shape
        if inv_smoothing is not None and (
            inv_smoothing.dtype != torch.float32 or inv_smoothing.shape != (cols,)
        ):
            raise KernelError(f"quantize: inv_smoothing must be float32 [{cols}]")
        q = torch.empty((rows, cols), dtype=torch.uint8 if unsigned else torch.int8)
        scales = torch.empty((rows, 1), dtype=torch.float32)
        (self._quantize_unsigned if unsigned else self._quantize)(
            x.data_ptr(),
            rows,
            cols,
            x.stride(0),
            None if inv_smoothing is None else inv_smoothing.data_ptr(),
            q.data_ptr(),
            scales.data_ptr(),
            torch.get_num_threads(),
        )
        return q, scales

    def dequantize_(
        self,
        acc: torch.Tensor,
        row_scale: torch.Tensor,
        col_scale: torch.Tensor,
        bias: torch.Tensor | None,
    ) -> torch.Tensor:
        """acc [n, m] int32 -> float32 acc * row_scale * col_scale (+ bias), written over acc's
        memory (same element size) and returned as a float32 view of it."""
        if acc.dtype != torch.int32 or acc.dim() != 2 or not acc.is_contiguous():
            raise KernelError("dequantize: acc must be a contiguous 2-D int32 tensor")
        rows, cols = acc.shape
        check_float_vectors(
            "dequantize",
            (("row_scale", row_scale, rows), ("col_scale", col_scale, cols), ("bias", bias, cols)),
        )
        self._dequantize(
            acc.data_ptr(),
            rows,
            cols,
            row_scale.data_ptr(),
            col_scale.data_ptr(),
            None if bias is None else bias.data_ptr(),
            acc.data_ptr(),
            torch.get_num_threads(),
        )
        return acc.view(torch.float32)


def load_int8_row_kernels() -> Int8RowKernels | None:
    """The kernels, or None where the CPU kernels cannot be built (see `build.py`)."""
    return library_wrapper(Int8RowKernels)
