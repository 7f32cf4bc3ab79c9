"""Which slice of each weight a tensor-parallel rank holds, and the per-rank model config.

The usual Megatron split: Q/K/V and gate/up are column-parallel (each rank holds its heads' /
its intermediate slice's output rows), o_proj and down_proj are row-parallel (each rank holds
the matching input columns and the partial sums are all-reduced), and the vocabulary head holds
a slice of the vocabulary rows. Embedding and norms are replicated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ..config import ModelConfig
from ..loader import Checkpoint


class TensorParallelConfigError(ValueError):
    """The model cannot be split across the asked number of ranks."""


def check_tensor_parallel(config: ModelConfig, size: int) -> None:
    """Raises TensorParallelConfigError unless `size` divides every split dimension."""
    for name in ("num_attention_heads", "num_key_value_heads", "intermediate_size"):
        value = getattr(config, name)
        if value % size:
            raise TensorParallelConfigError(
                f"tensor_parallel_size={size} must divide the model's {name} ({value})"
            )


@dataclass(frozen=True)
class TensorShard:
    rank: int
    size: int

    def rows(self, total: int) -> slice:
        """This rank's equal part of `total` (which `size` divides)."""
        part = total // self.size
        return slice(self.rank * part, (self.rank + 1) * part)

    def vocab_rows(self, vocab: int) -> tuple[int, int, int]:
        """(start, end, padded part): the vocabulary is cut into equal padded parts so the
        gathered logits have one shape per rank; the last part may be short."""
        part = -(-vocab // self.size)
        start = min(self.rank * part, vocab)
        return start, min(start + part, vocab), part


def shard_model_config(config: ModelConfig, shard: TensorShard) -> ModelConfig:
    """The config the rank's LlamaForCausalLM is built from: its heads and MLP slice (the
    vocabulary stays whole here; the head is cut after loading, see `parallel_layers`)."""
    return dataclasses.replace(
        config,
        num_attention_heads=config.num_attention_heads // shard.size,
        num_key_value_heads=config.num_key_value_heads // shard.size,
        intermediate_size=config.intermediate_size // shard.size,
    )


_COLUMN = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")  # output rows split
_ROW = ("o_proj", "down_proj")  # input columns split


def shard_weight(
    name: str, tensor: torch.Tensor, config: ModelConfig, shard: TensorShard
) -> torch.Tensor:
    """The part of the Hugging Face tensor `name` (full model `config`) rank `shard` holds."""
    parts = name.rsplit(".", 2)
    if len(parts) < 3 or not name.startswith("model.layers."):
        return tensor
    module = parts[1]
    if module in _COLUMN:
        if module == "q_proj":
            total = config.num_attention_heads * config.head_dim
        elif module in ("k_proj", "v_proj"):
            total = config.num_key_value_heads * config.head_dim
        else:
            total = config.intermediate_size
        return tensor[shard.rows(total)]  # weight [out, in] or bias [out]
    if module in _ROW:
        return tensor[:, shard.rows(tensor.shape[1])]
    return tensor


class ShardedCheckpoint(Checkpoint):
    """A checkpoint seen by one rank: its config and slices of the weights.

    `weights_quantized` is False so that quantization='auto' picks float32: int8 packing is
    not split per rank yet (EngineConfig refuses int8 with tensor_parallel_size > 1)."""

    def __init__(self, inner: Checkpoint, shard: TensorShard) -> None:
        check_tensor_parallel(inner.model_config, shard.size)
        super().__init__(inner.path, shard_model_config(inner.model_config, shard), inner.dtype)
        self.format = inner.format
        self.inner = inner
        self.shard = shard

    def weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        full = self.inner.model_config
        for name, tensor in self.inner.weights():
            yield name, shard_weight(name, tensor, full, self.shard)

    def gguf_metadata(self) -> dict[str, Any]:
        return self.inner.gguf_metadata()
