"""Few-row int8 GEMM from a VNNI-packed weight, scales and bias applied (`csrc/int8_gemm.c`)."""

from __future__ import annotations

import ctypes

import torch

from .build import KernelError, check_float_vectors, library_wrapper


class VnniWeight:
    """An int8 weight [N, K] packed for the kernel: [N/16, K/4, 16, 4] plus 128 * row sums."""

    def __init__(self, qweight: torch.Tensor) -> None:
        if qweight.dtype != torch.int8 or qweight.dim() != 2:
            raise KernelError(
                f"VNNI packing needs a 2-D int8 weight, got {qweight.dtype} {tuple(qweight.shape)}"
            )
        n, k = qweight.shape
        if n % 16 or k % 4:
            raise KernelError(f"VNNI packing needs N % 16 == 0 and K % 4 == 0, got N={n}, K={k}")
        self.out_features, self.in_features = n, k
        # Groups of 4 consecutive inputs move together: permute them as int32 (8x faster than
        # moving single bytes), then look at the result as bytes again.
        groups = qweight.contiguous().view(torch.int32).reshape(n // 16, 16, k // 4)
        self.packed = (
            groups.permute(0, 2, 1).contiguous().view(torch.int8).view(n // 16, k // 4, 16, 4)
        )
        self.offset = (qweight.sum(dim=1, dtype=torch.int32) * 128).contiguous()


class Int8Gemm:
    def __init__(self, library: ctypes.CDLL) -> None:
        self.supported = bool(library.int8_gemm_supported())
        fn = library.int8_gemm_vnni
        fn.restype = ctypes.c_int
        fn.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int,
        ]
        self._fn = fn

    def __call__(
        self,
        qx: torch.Tensor,  # [M, K] uint8 (int8 + 128, `Int8RowKernels.quantize(unsigned=True)`)
        row_scale: torch.Tensor,  # [M] or [M, 1] float32
        weight: VnniWeight,
        col_scale: torch.Tensor,  # [N] float32
        bias: torch.Tensor | None,  # [N] float32
    ) -> torch.Tensor:
        """float32 [M, N] = (qx @ W^T) * row_scale * col_scale (+ bias)."""
        if qx.dim() != 2 or qx.device.type != "cpu":
            raise KernelError("int8 GEMM: x must be a 2-D CPU tensor")
        m, k = qx.shape
        n = weight.out_features
        if qx.dtype != torch.uint8 or not qx.is_contiguous() or k != weight.in_features:
            raise KernelError(f"int8 GEMM: x must be contiguous uint8 [M, {weight.in_features}]")
        check_float_vectors(
            "int8 GEMM",
            (("row_scale", row_scale, m), ("col_scale", col_scale, n), ("bias", bias, n)),
        )
        out = torch.empty((m, n), dtype=torch.float32)
        status = self._fn(
            qx.data_ptr(),
            row_scale.data_ptr(),
            m,
            k,
            n,
            weight.packed.data_ptr(),
            weight.offset.data_ptr(),
            col_scale.data_ptr(),
            None if bias is None else bias.data_ptr(),
            out.data_ptr(),
            torch.get_num_threads(),
        )
        if status != 0:
            raise KernelError(
                "int8 GEMM: " + ("shape not supported" if status == 1 else "needs AVX-512 VNNI")
            )
        return out


def load_int8_gemm() -> Int8Gemm | None:
    """The kernel where the library builds and the CPU has AVX-512 VNNI, else None."""
    gemm = library_wrapper(Int8Gemm)
    return gemm if gemm is not None and gemm.supported else None
