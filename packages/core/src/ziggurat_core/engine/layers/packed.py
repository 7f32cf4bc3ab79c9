"""CPU weight formats a `Linear` can run from instead of its dense float weight.

- `OneDnnWeight`: the float32 weight in oneDNN's blocked layout (same numbers, faster GEMM).
- `Int8Weight`: W8A8 like llama.cpp's quantised dot products. Weights are int8 with one scale
  per output row; activations are quantised to int8 per token (one scale per row of the input)
  at every call; the product accumulates in int32 (the C int8 GEMM of this CPU's instruction
  set, `cpu_kernels/int8_gemm.py`) and is scaled back to float. Integer accumulation is exact
  and each row's scale depends on that row only, so a token's result does not depend on what
  else is in the batch (seeded sampling stays reproducible across batch compositions), and
  every kernel variant returns the same bits.
"""

from __future__ import annotations

import torch

from ..cpu_kernels import (
    BoundInt8Linear,
    Int8Gemm,
    Int8RowKernels,
    PackedInt8Weight,
    load_int8_gemm,
)
from ..cpu_kernels.build import wrapper_of

# int8 range used on both sides: symmetric, so -128 is never produced.
_INT8_MAX = 127.0
# From this many rows on, a layer on an AVX-512 VNNI CPU calls `torch._int_mm` (oneDNN's int8
# GEMM, which blocks large products for that CPU's caches better) instead of the C kernel, which
# is faster below it (see docs/benchmarks.md for the measurement). On every other instruction set
# oneDNN's int8 GEMM is a slow reference loop: the C kernel takes every row count there.
INT_MM_MIN_ROWS = {"avx512vnni": 128}
# Rows that are all zero get this scale instead of 0 (no division by zero, result still 0).
_MIN_SCALE = 1e-12


def onednn_row_bucket(rows: int) -> int:
    """The row count a oneDNN GEMM of `rows` rows runs at: every count up to 8, then multiples
    of 8 up to 64, then multiples of 64.

    oneDNN and ideep build and cache one primitive per input shape (up to 1,024 each), so a
    server that sees every step size from 1 to `max_num_batched_tokens` keeps growing its heap
    for hours (the soak in docs/reliability.md). Buckets bound the shapes to a few dozen per
    weight, all warm early, for at most 63 padded rows on a large prefill.
    """
    if rows <= 8:
        return rows
    step = 8 if rows <= 64 else 64
    return -(-rows // step) * step


def int_mm_bucketed(qx: torch.Tensor, qweight: torch.Tensor) -> torch.Tensor:
    """`torch._int_mm` at the row bucket of `qx` (oneDNN caches its int8 GEMM per shape too;
    see `onednn_row_bucket`). Zero rows add nothing and rows are independent in integer
    arithmetic, so the kept rows are exactly the unpadded product."""
    rows = qx.shape[0]
    padded = onednn_row_bucket(rows)
    if padded == rows:
        return torch._int_mm(qx, qweight)
    return torch._int_mm(torch.nn.functional.pad(qx, (0, 0, 0, padded - rows)), qweight)[:rows]


class OneDnnWeight:
    """A float32 weight in oneDNN's blocked layout; inputs must be 2-D float32."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.weight = weight.detach().to_mkldnn()
        self.bias = None if bias is None else bias.detach().to_mkldnn()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0]
        padded = onednn_row_bucket(rows)
        if padded != rows:
            x = torch.nn.functional.pad(x, (0, 0, 0, padded - rows))
        out = torch._C._nn.mkldnn_linear(x.contiguous().to_mkldnn(), self.weight, self.bias)
        dense = out.to_dense()
        return dense if padded == rows else dense[:rows]


class Int8Weight:
    """A weight [out, in] as int8 with per-row scales, in the C GEMM's packed layout
    (`packed_weight`) where the CPU kernels are built, and as an [in, out] view for
    `torch._int_mm` (`qweight`) where that is used: without the kernels, or for large inputs on
    AVX-512 VNNI (`INT_MM_MIN_ROWS`).

    `smoothing` [in] (optional, all > 0): the weight's columns are stored multiplied by it and
    inputs are divided by it before quantisation; the product is unchanged in exact arithmetic
    (see `quantization.py` for why).
    """

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None, smoothing: torch.Tensor | None = None
    ) -> None:
        w = weight.detach().float()
        self.inv_smoothing: torch.Tensor | None = None
        if smoothing is not None:
            if smoothing.shape != (w.shape[1],) or not bool((smoothing > 0).all()):
                raise ValueError(f"smoothing must be [{w.shape[1]}] and positive")
            w = w * smoothing.float()[None, :]
            self.inv_smoothing = 1.0 / smoothing.float()
        scale = w.abs().amax(dim=1).clamp_(min=_MIN_SCALE) / _INT8_MAX  # [out]
        rows = torch.round(w / scale[:, None]).to(torch.int8)  # [out, in]
        self.scale = scale
        self.bias = None if bias is None else bias.detach().float().contiguous()
        self.out_dtype = weight.dtype
        # The variant ZIGGURAT_CPU_ISA selects now packs the weight and runs it from then on,
        # whatever is selected later; the row kernels come from the same library.
        gemm = load_int8_gemm()
        self._gemm = gemm
        self._row_kernels = None if gemm is None else wrapper_of(gemm.library, Int8RowKernels)
        self.packed_weight = None if gemm is None else PackedInt8Weight(rows)
        # Quantize + GEMM in one C call with the weight side checked once: the path of every
        # row count the C kernel takes (all of a decode step).
        self.fused: BoundInt8Linear | None = None
        if gemm is not None and self.packed_weight is not None:
            self.fused = gemm.bind(self.packed_weight, self.scale, self.bias, self.inv_smoothing)
        # The rows from which `_int_mm` takes over; None: never (the kernel takes them all).
        self.int_mm_min_rows: int | None = 0 if gemm is None else INT_MM_MIN_ROWS.get(gemm.isa)
        # [in, out] as a transposed view: _int_mm reads it as fast as a contiguous copy. Held
        # only where _int_mm runs: the weights are the bulk of the model's memory.
        self.qweight: torch.Tensor | None = None if self.int_mm_min_rows is None else rows.t()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        fused = self.fused
        if (
            fused is not None
            and x.dtype == torch.float32
            and x.stride(-1) == 1
            and x.device.type == "cpu"
            and (self.int_mm_min_rows is None or x.shape[0] < self.int_mm_min_rows)
        ):
            out = fused(x)
            return out if self.out_dtype == torch.float32 else out.to(self.out_dtype)
        kernels, gemm = self._row_kernels, self._gemm
        if (
            kernels is not None
            and gemm is not None
            and self.packed_weight is not None
            and x.device.type == "cpu"
        ):
            if x.dtype != torch.float32 or x.stride(-1) != 1:
                x = x.float().contiguous()
            if self.int_mm_min_rows is None or x.shape[0] < self.int_mm_min_rows:
                return self._kernel(gemm, kernels, x).to(self.out_dtype)
            # One C pass each side of the GEMM instead of ~8 torch ops.
            assert self.qweight is not None
            qx, row_scale = kernels.quantize(x, self.inv_smoothing)
            out = kernels.dequantize_(
                int_mm_bucketed(qx, self.qweight), row_scale, self.scale, self.bias
            )
            return out.to(self.out_dtype)
        if self.qweight is None:
            raise RuntimeError("this int8 weight was packed for the C kernels, now unavailable")
        if self.inv_smoothing is not None:
            x = x * self.inv_smoothing
        qx, row_scale = quantize_rows_int8(x)
        out = int_mm_bucketed(qx, self.qweight).float()
        out.mul_(row_scale).mul_(self.scale)
        if self.bias is not None:
            out.add_(self.bias)
        return out.to(self.out_dtype)

    def _kernel(self, gemm: Int8Gemm, kernels: Int8RowKernels, x: torch.Tensor) -> torch.Tensor:
        assert self.packed_weight is not None
        qx, row_scale = kernels.quantize(x, self.inv_smoothing, unsigned=gemm.input_offset != 0)
        return gemm(qx, row_scale, self.packed_weight, self.scale, self.bias)

    def int8_rows(self) -> torch.Tensor:
        """The int8 weight [out, in] (stored multiplied by the smoothing, if any)."""
        if self.qweight is not None:
            return self.qweight.t()
        assert self.packed_weight is not None
        return self.packed_weight.unpack()

    def dequantize(self) -> torch.Tensor:
        """The float weight [out, in] this int8 form stands for (tests, error bounds)."""
        w = self.int8_rows().float() * self.scale[:, None]
        if self.inv_smoothing is not None:
            w = w * self.inv_smoothing[None, :]
        return w.to(self.out_dtype)


def quantize_rows_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, k] float -> (int8 [n, k], float32 scales [n, 1]) with x ~= q * scale, row by row."""
    x32 = x.float()
    row_scale = x32.abs().amax(dim=1, keepdim=True).clamp_(min=_MIN_SCALE).div_(_INT8_MAX)
    return torch.round(x32 / row_scale).to(torch.int8), row_scale
