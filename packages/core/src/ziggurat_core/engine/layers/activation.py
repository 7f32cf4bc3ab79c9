"""SwiGLU's gate: silu(gate) * up over the fused [gate | up] projection output."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..cpu_kernels.elementwise import fits, load_elementwise_kernels
from .kernels import KernelsOnFirstUse


class SiluAndMul(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self._kernels = KernelsOnFirstUse(load_elementwise_kernels)

    def forward(self, gate_up: torch.Tensor) -> torch.Tensor:
        # `fits` first: a CUDA run never builds the CPU kernels.
        kernels = self._kernels() if fits(gate_up) else None
        if kernels is not None:
            return kernels.silu_mul(gate_up)
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate).mul_(up)
