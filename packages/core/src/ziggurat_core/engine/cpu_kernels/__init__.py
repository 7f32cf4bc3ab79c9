"""C kernels for the CPU hot paths torch ops cover poorly, compiled on first use (`build.py`)."""

from .build import ISAS, CpuIsaError, KernelError, cpu_isa, load_cpu_library, native_isa
from .decode_fused import DecodeFusedKernels, load_decode_fused_kernels
from .decoder_layers import (
    BoundDecoderLayers,
    DecoderLayerParts,
    DecoderLayersKernel,
    DecoderShape,
    decoder_layers_kernel_for,
    load_decoder_layers_kernel,
)
from .elementwise import ElementwiseKernels, load_elementwise_kernels
from .int8_gemm import BoundInt8Linear, Int8Gemm, PackedInt8Weight, load_int8_gemm
from .int8_rows import Int8RowKernels, load_int8_row_kernels
from .paged_decode import PagedAttentionKernel, load_paged_attention_kernel
from .sampling import SamplingKernel, load_sampling_kernel

__all__ = [
    "ISAS",
    "BoundDecoderLayers",
    "BoundInt8Linear",
    "CpuIsaError",
    "DecodeFusedKernels",
    "DecoderLayerParts",
    "DecoderLayersKernel",
    "DecoderShape",
    "ElementwiseKernels",
    "Int8Gemm",
    "Int8RowKernels",
    "KernelError",
    "PackedInt8Weight",
    "PagedAttentionKernel",
    "SamplingKernel",
    "cpu_isa",
    "decoder_layers_kernel_for",
    "load_cpu_library",
    "load_decode_fused_kernels",
    "load_decoder_layers_kernel",
    "load_elementwise_kernels",
    "load_int8_gemm",
    "load_int8_row_kernels",
    "load_paged_attention_kernel",
    "load_sampling_kernel",
    "native_isa",
]
