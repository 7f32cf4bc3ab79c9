"""The C kernels the layers use, loaded once per process (None where they cannot be built)."""

from __future__ import annotations

from ..cpu_kernels import (
    ElementwiseKernels,
    Int8Gemm,
    Int8RowKernels,
    load_elementwise_kernels,
    load_int8_gemm,
    load_int8_row_kernels,
)

_loaded: dict[str, object] = {}


def elementwise_kernels() -> ElementwiseKernels | None:
    if "elementwise" not in _loaded:
        _loaded["elementwise"] = load_elementwise_kernels()
    return _loaded["elementwise"]  # type: ignore[return-value]


def int8_row_kernels() -> Int8RowKernels | None:
    if "int8_rows" not in _loaded:
        _loaded["int8_rows"] = load_int8_row_kernels()
    return _loaded["int8_rows"]  # type: ignore[return-value]


def int8_gemm() -> Int8Gemm | None:
    if "int8_gemm" not in _loaded:
        _loaded["int8_gemm"] = load_int8_gemm()
    return _loaded["int8_gemm"]  # type: ignore[return-value]
