"""The interface every attention backend implements.

A step runs a flat batch of `num_tokens` new tokens from several sequences (prefill chunks and
single decode tokens mixed). Each backend builds its own per-step metadata once (`prepare`), and
every layer calls `forward` with it.

KV cache layout (one tensor per layer, the same for every backend):
    kv_cache[layer]: [2, num_blocks, block_size, num_kv_heads, head_dim]  (0 = keys, 1 = values)
Token `t` of a sequence lives in slot `block_table[t // block_size] * block_size + t % block_size`.
Backends may read whole blocks, including slots past a sequence's context, and mask them out;
a NaN there would still poison the weighted sum, so allocate the cache with `torch.zeros`.
The cache's dtype is EngineConfig.kv_cache_dtype resolved; it may differ from the query's (a
float16 cache for float32 compute), which only the torch backend supports.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch


class AttentionLayoutError(ValueError):
    """A StepLayout that cannot describe a valid step."""


@dataclass
class StepLayout:
    """Where the new tokens of one step sit, in the order they appear in the flat batch."""

    query_lens: list[int]  # new tokens per sequence this step
    context_lens: list[int]  # tokens in the cache per sequence after this step (cached + new)
    block_tables: list[list[int]]  # physical block ids per sequence
    block_size: int

    @property
    def num_tokens(self) -> int:
        return sum(self.query_lens)

    def validate(self) -> None:
        """Raise AttentionLayoutError unless every sequence is consistent."""
        n = len(self.query_lens)
        if len(self.context_lens) != n or len(self.block_tables) != n:
            raise AttentionLayoutError(
                "query_lens, context_lens and block_tables must have the same length, got "
                f"{n}, {len(self.context_lens)}, {len(self.block_tables)}"
            )
        if self.block_size < 1:
            raise AttentionLayoutError(f"block_size must be >= 1, got {self.block_size}")
        for i, (q_len, ctx_len, table) in enumerate(
            zip(self.query_lens, self.context_lens, self.block_tables, strict=True)
        ):
            if q_len < 1:
                raise AttentionLayoutError(f"sequence {i}: query_len must be >= 1, got {q_len}")
            if ctx_len < q_len:
                raise AttentionLayoutError(
                    f"sequence {i}: context_len {ctx_len} is smaller than query_len {q_len}"
                )
            needed = -(-ctx_len // self.block_size)
            if len(table) < needed:
                raise AttentionLayoutError(
                    f"sequence {i}: {ctx_len} tokens need {needed} blocks, the block table has "
                    f"{len(table)}"
                )

    def slot_mapping(self) -> list[int]:
        """Cache slot of each new token, in batch order."""
        slots: list[int] = []
        bs = self.block_size
        for q_len, ctx_len, table in zip(self.query_lens, self.context_lens, self.block_tables, strict=True):
            for pos in range(ctx_len - q_len, ctx_len):
                slots.append(table[pos // bs] * bs + pos % bs)
        return slots


@dataclass(frozen=True)
class KernelStepInputs:
    """What the CPU kernels' paged attention needs for one step, the same for every layer:
    every new token is one row (`PortableAttentionMetadata.kernel_rows`)."""

    slot_mapping: torch.Tensor  # [num_tokens] int64
    block_tables: torch.Tensor  # [rows, max_blocks] int64
    context_lens: torch.Tensor  # [rows] int64
    token_rows: torch.Tensor  # [rows] int64
    block_size: int


class AttentionBackend(ABC):
    name: str = "base"

    @abstractmethod
    def prepare(self, layout: StepLayout, device: torch.device) -> Any:
        """Build the per-step metadata (tensors on `device`) that every layer reuses."""

    @abstractmethod
    def forward(
        self,
        query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
        key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        value: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        kv_cache: torch.Tensor,  # [2, num_blocks, block_size, num_kv_heads, head_dim]
        metadata: Any,
        scale: float,
    ) -> torch.Tensor:
        """Write the new keys/values into the cache, then attend causally over each sequence's
        whole context (cached prefix + new tokens). Returns [num_tokens, num_heads, head_dim]."""

    def prepare_decode(
        self,
        block_tables: torch.Tensor,  # [B, max_blocks] int64, every id a valid block
        context_lens: torch.Tensor,  # [B] int64
        positions: torch.Tensor,  # [B] int64: the new token's position (context_len - 1)
        block_size: int,
    ) -> Any:
        """The metadata of a decode step of B sequences (one new token each, row i = sequence
        i) built from tensors on the device alone, reading nothing back to the host: the same
        calls serve every step of that batch size, so a CUDA graph can capture them and replay
        them over new buffer contents (`cuda_graphs.py`)."""
        raise NotImplementedError(f"the {self.name} attention backend has no fixed-shape decode")

    def forward_fused_qkv(
        self,
        qkv: torch.Tensor,  # [num_tokens, (num_heads + 2 * num_kv_heads) * head_dim]
        cos: torch.Tensor,  # as `RotaryEmbedding.cos_sin` returns them
        sin: torch.Tensor,
        num_heads: int,
        kv_cache: torch.Tensor,
        metadata: Any,
        scale: float,
    ) -> torch.Tensor | None:
        """`forward` from a fused QKV projection's output, the query and key heads rotated
        (`layers/rotary.apply_rotary`) on the way, where the backend does that in fewer passes
        than rotating, splitting and storing one by one; None where it does not (the caller
        then rotates and calls `forward`). The result is the same bits either way."""
        return None

    def kernel_step_inputs(
        self, kv_caches: list[torch.Tensor], metadata: Any
    ) -> KernelStepInputs | None:
        """The step's inputs for a model that runs its layers in one CPU kernel call
        (`cpu_kernels/decoder_layers.py`), where this backend attends with the CPU kernels'
        paged attention on these caches (so the model's call computes what `forward_fused_qkv`
        would); None where it does not."""
        return None
