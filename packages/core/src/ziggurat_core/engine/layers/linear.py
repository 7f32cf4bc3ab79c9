"""Linear and embedding layers whose parameters start uninitialised.

The weights always come from a checkpoint, so random initialisation (seconds for a 135M model
on CPU) would be wasted work; these allocate with `torch.empty` on the current default device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Linear(nn.Module):
    """y = x W^T (+ b), W: [out_features, in_features] as in nn.Linear and Hugging Face."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None

        # A oneDNN-blocked copy of the weight, set by `prepack_cpu_linears` for CPU float32.
        self._mkldnn_weight: torch.Tensor | None = None
        self._mkldnn_bias: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._mkldnn_weight is not None and x.dim() == 2 and x.dtype == torch.float32:
            out = torch._C._nn.mkldnn_linear(x.contiguous().to_mkldnn(), self._mkldnn_weight, self._mkldnn_bias)
            return out.to_dense()
        return F.linear(x, self.weight, self.bias)

    def prepack_mkldnn(self) -> None:
        """Keep a oneDNN-blocked copy of the weight (the dense one stays for state_dict)."""
        self._mkldnn_weight = self.weight.detach().to_mkldnn()
        self._mkldnn_bias = self.bias.detach().to_mkldnn() if self.bias is not None else None

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Embedding(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim), requires_grad=False)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(token_ids, self.weight)


# On CPU, oneDNN's blocked-weight GEMM beats MKL's sgemm in the engine for every projection of
# a decode step: at 64 sequences a SmolLM2 step took 320 ms with only the wide ones (>= 2048
# outputs) packed and 213 ms with all of them (isolated GEMM timings understate the gain).
MKLDNN_MIN_OUT_FEATURES = 0


def prepack_cpu_linears(model: nn.Module, min_out_features: int = MKLDNN_MIN_OUT_FEATURES) -> int:
    """Give float32 CPU Linears with at least `min_out_features` outputs a oneDNN weight copy;
    returns how many were packed."""
    if not torch.backends.mkldnn.is_available():
        return 0
    packed = 0
    for module in model.modules():
        if (
            isinstance(module, Linear)
            and module.out_features >= min_out_features
            and module.weight.device.type == "cpu"
            and module.weight.dtype == torch.float32
        ):
            module.prepack_mkldnn()
            packed += 1
    return packed
