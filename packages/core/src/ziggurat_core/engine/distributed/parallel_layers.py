"""The modules that make a loaded rank's model tensor-parallel: the all-reduce after the
row-parallel projections, and the vocabulary-parallel head whose logits are gathered on rank 0."""

from __future__ import annotations

from typing import cast

import torch
import torch.distributed as dist
from torch import nn

from ..layers import Linear
from ..models.llama import LlamaDecoderLayer, LlamaForCausalLM
from .sharding import TensorShard


class RowParallel(nn.Module):
    """A Linear over this rank's input columns; the ranks' partial outputs are summed. (The
    projections it wraps have no bias, which would otherwise be added once per rank.)"""

    def __init__(self, linear: Linear) -> None:
        super().__init__()
        if linear.bias is not None:
            raise ValueError("a row-parallel projection with a bias is not supported")
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x)
        dist.all_reduce(out)
        return out


class VocabParallelHead(nn.Module):
    """This rank's rows of the vocabulary head (zero-padded to the common part size).
    Rank 0 returns the whole [n, vocab] logits; the other ranks return their own part, which
    nothing reads: they only take part in the gather."""

    def __init__(self, weight: torch.Tensor, shard: TensorShard, vocab_size: int) -> None:
        super().__init__()
        start, end, part = shard.vocab_rows(vocab_size)
        rows = torch.zeros(part, weight.shape[1], dtype=weight.dtype, device=weight.device)
        rows[: end - start].copy_(weight[start:end])
        self.linear = Linear(weight.shape[1], part, bias=False)
        self.linear.weight = nn.Parameter(rows, requires_grad=False)
        self.rank = shard.rank
        self.size = shard.size
        self.vocab_size = vocab_size

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        local = self.linear(hidden).contiguous()
        if self.rank != 0:
            dist.gather(local, None, dst=0)
            return local
        parts = [torch.empty_like(local) for _ in range(self.size)]
        dist.gather(local, parts, dst=0)
        return torch.cat(parts, dim=-1)[..., : self.vocab_size]


@torch.no_grad()
def parallelize_llama(model: nn.Module, shard: TensorShard) -> None:
    """Turn a loaded LlamaForCausalLM, built from the rank's sharded config and weights, into
    the rank's part of the tensor-parallel model."""
    llama = cast(LlamaForCausalLM, model)
    llama.model.use_layer_kernel = False  # the one-call C layers know nothing of all-reduce
    for module in llama.model.layers:
        layer = cast(LlamaDecoderLayer, module)
        layer.self_attn.o_proj = RowParallel(layer.self_attn.o_proj)  # type: ignore[assignment]
        layer.mlp.down_proj = RowParallel(layer.mlp.down_proj)  # type: ignore[assignment]
    head = llama.lm_head
    assert head.weight is not None
    llama.lm_head = VocabParallelHead(head.weight, shard, llama.config.vocab_size)  # type: ignore[assignment]
