"""C kernels for the CPU hot paths torch ops cover poorly, compiled on first use (`build.py`)."""

from .build import KernelError, load_cpu_library
from .int8_rows import Int8RowKernels, load_int8_row_kernels
from .paged_decode import PagedDecodeKernel, load_paged_decode_kernel

__all__ = [
    "Int8RowKernels",
    "KernelError",
    "PagedDecodeKernel",
    "load_cpu_library",
    "load_int8_row_kernels",
    "load_paged_decode_kernel",
]
