"""RMSNorm as Llama defines it: normalise in float32, scale by the weight in the input dtype."""

from __future__ import annotations

import torch
from torch import nn

from ..cpu_kernels.elementwise import fits, load_elementwise_kernels
from .kernels import KernelsOnFirstUse


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)
        self.eps = eps
        self._kernels = KernelsOnFirstUse(load_elementwise_kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # `fits` first: it rules out CUDA tensors, and a CUDA run never builds the CPU kernels.
        kernels = self._kernels() if fits(x) and fits(self.weight, dim=1) else None
        if kernels is not None:
            return kernels.rmsnorm(x, self.weight, self.eps)
        x32 = x.float()
        variance = x32.pow(2).mean(-1, keepdim=True)
        return self.weight * (x32 * torch.rsqrt(variance + self.eps)).to(x.dtype)

    def add_and_norm(
        self, x: torch.Tensor, residual: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(x + residual), x + residual): the pre-norm block's residual add fused in.
        `x` is a fresh activation owned by the caller, so the sum is written into it."""
        fitting = fits(x) and fits(residual) and fits(self.weight, dim=1)
        kernels = self._kernels() if fitting else None
        if kernels is not None:
            return kernels.add_rmsnorm_(x, residual, self.weight, self.eps), x
        summed = x.add_(residual)
        return self.forward(summed), summed
