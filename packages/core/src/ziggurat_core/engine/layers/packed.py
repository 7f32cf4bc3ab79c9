"""CPU weight formats a `Linear` can run from instead of its dense float weight.

- `OneDnnWeight`: the float32 weight in oneDNN's blocked layout (same numbers, faster GEMM).
- `Int8Weight`: W8A8 like llama.cpp's quantised dot products. Weights are int8 with one scale
  per output row; activations are quantised to int8 per token (one scale per row of the input)
  at every call; the product accumulates in int32 (`torch._int_mm`, VNNI on x86) and is scaled
  back to float. Integer accumulation is exact and each row's scale depends on that row only,
  so a token's result does not depend on what else is in the batch (seeded sampling stays
  reproducible across batch compositions). On a 2-core AVX-512 VNNI CPU the GEMMs of a
  135M-parameter model run ~3x faster than oneDNN float32 and read 4x fewer weight bytes.
"""

from __future__ import annotations

import torch

from ..cpu_kernels import VnniWeight
from .kernels import int8_gemm, int8_row_kernels

# int8 range used on both sides: symmetric, so -128 is never produced.
_INT8_MAX = 127.0
# Inputs with at most this many rows (decode steps) use the VNNI kernel, larger ones _int_mm:
# the kernel streams weights from memory up to 3x faster (measured 1-64 rows); _int_mm is as
# fast from 128 rows and blocks large products better.
VNNI_MAX_ROWS = 64
# Rows that are all zero get this scale instead of 0 (no division by zero, result still 0).
_MIN_SCALE = 1e-12


class OneDnnWeight:
    """A float32 weight in oneDNN's blocked layout; inputs must be 2-D float32."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.weight = weight.detach().to_mkldnn()
        self.bias = None if bias is None else bias.detach().to_mkldnn()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = torch._C._nn.mkldnn_linear(x.contiguous().to_mkldnn(), self.weight, self.bias)
        return out.to_dense()


class Int8Weight:
    """A weight [out, in] as int8 (`qweight`: an [in, out] view, as `_int_mm` takes it) with
    per-row scales.

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
        # [in, out] as a transposed view: _int_mm reads it as fast as a contiguous copy.
        self.qweight = rows.t()
        self.scale = scale
        self.bias = None if bias is None else bias.detach().float().contiguous()
        self.out_dtype = weight.dtype
        # The same weight packed for the few-row VNNI kernel (decode steps), where the CPU has it.
        self.vnni: VnniWeight | None = None
        if int8_gemm() is not None and rows.shape[0] % 16 == 0 and rows.shape[1] % 4 == 0:
            self.vnni = VnniWeight(rows)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        kernels = int8_row_kernels()
        if (
            kernels is not None
            and x.dtype == torch.float32
            and x.stride(-1) == 1
            and x.device.type == "cpu"
        ):
            gemm = int8_gemm()
            if self.vnni is not None and gemm is not None and x.shape[0] <= VNNI_MAX_ROWS:
                qx, row_scale = kernels.quantize(x, self.inv_smoothing, unsigned=True)
                out = gemm(qx, row_scale, self.vnni, self.scale, self.bias)
                return out.to(self.out_dtype)
            # One C pass each side of the GEMM instead of ~8 torch ops.
            qx, row_scale = kernels.quantize(x, self.inv_smoothing)
            out = kernels.dequantize_(
                torch._int_mm(qx, self.qweight), row_scale, self.scale, self.bias
            )
            return out.to(self.out_dtype)
        if self.inv_smoothing is not None:
            x = x * self.inv_smoothing
        qx, row_scale = quantize_rows_int8(x)
        out = torch._int_mm(qx, self.qweight).float()
        out.mul_(row_scale).mul_(self.scale)
        if self.bias is not None:
            out.add_(self.bias)
        return out.to(self.out_dtype)

    def dequantize(self) -> torch.Tensor:
        """The float weight [out, in] this int8 form stands for (tests, error bounds)."""
        w = self.qweight.t().float() * self.scale[:, None]
        if self.inv_smoothing is not None:
            w = w * self.inv_smoothing[None, :]
        return w.to(self.out_dtype)


def quantize_rows_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, k] float -> (int8 [n, k], float32 scales [n, 1]) with x ~= q * scale, row by row."""
    x32 = x.float()
    row_scale = x32.abs().amax(dim=1, keepdim=True).clamp_(min=_MIN_SCALE).div_(_INT8_MAX)
    return torch.round(x32 / row_scale).to(torch.int8), row_scale
