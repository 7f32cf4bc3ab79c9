"""Linear and embedding layers whose parameters start uninitialised.

The weights always come from a checkpoint, so random initialisation (seconds for a 135M model
on CPU) would be wasted work; these allocate with `torch.empty` on the current default device.
On CPU a Linear can be packed into a faster weight format (`layers/packed.py`) after loading;
the dense weight is then released so the model does not hold its projections twice.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .packed import Int8Weight, OneDnnWeight

PackFormat = Literal["onednn", "int8"]


class Linear(nn.Module):
    """y = x W^T (+ b), W: [out_features, in_features] as in nn.Linear and Hugging Face."""

    weight: nn.Parameter | None

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None
        self.packed: OneDnnWeight | Int8Weight | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is None:
            assert self.weight is not None
            return F.linear(x, self.weight, self.bias)
        if x.dim() == 2:  # the model's flat token batch: no reshape round trip
            return self.packed(x)
        lead = x.shape[:-1]
        return self.packed(x.reshape(-1, self.in_features)).view(*lead, self.out_features)

    def pack(self, fmt: PackFormat, smoothing: torch.Tensor | None = None) -> None:
        """Run from `fmt` from now on and drop the dense weight and bias (a weight tied to
        another module, the embedding, stays alive there). `smoothing`: int8 only, see
        `Int8Weight`."""
        if self.weight is None:
            raise RuntimeError("this Linear is already packed")
        if fmt == "int8":
            self.packed = Int8Weight(self.weight, self.bias, smoothing)
        elif fmt == "onednn":
            if self.weight.dtype != torch.float32:
                raise ValueError(f"oneDNN packing needs float32 weights, got {self.weight.dtype}")
            if smoothing is not None:
                raise ValueError("smoothing applies to int8 packing only")
            self.packed = OneDnnWeight(self.weight, self.bias)
        else:
            raise ValueError(f"unknown weight format {fmt!r}")
        self.weight = None
        self.bias = None

    def extra_repr(self) -> str:
        fmt = "" if self.packed is None else f", packed={type(self.packed).__name__}"
        return f"in_features={self.in_features}, out_features={self.out_features}{fmt}"


class Embedding(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim), requires_grad=False)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(token_ids, self.weight)


def pack_linears(model: nn.Module, fmt: PackFormat) -> int:
    """Pack every CPU Linear of `model` into `fmt` (see `Linear.pack`); returns how many.

    oneDNN: float32 weights only (on CPU its blocked GEMM beat MKL's sgemm for every projection
    of a SmolLM2 decode step, the narrow ones included; see docs/benchmarks.md).
    """
    if fmt == "onednn" and not torch.backends.mkldnn.is_available():
        return 0
    packed = 0
    for module in model.modules():
        if (
            not isinstance(module, Linear)
            or module.weight is None
            or module.weight.device.type != "cpu"
        ):
            continue
        if fmt == "onednn" and module.weight.dtype != torch.float32:
            continue
        module.pack(fmt)
        packed += 1
    return packed
