"""Attention in plain torch: works on every device and dtype; the backend used on CPU.

A step is split in two parts:
- decodes (one new token per sequence): one batched computation for all of them. Their whole
  contexts are gathered from the paged cache into a padded [B, max_ctx, kvh, d] buffer, and the
  scores/softmax/weighted sum run as batched matmuls with the query heads grouped under their
  kv head (so GQA needs no copy of the kv heads).
- prefill chunks: one scaled_dot_product_attention per sequence. Without a cached prefix the new
  keys/values are used as they are (plain causal mask); with one, the whole context is gathered
  and the causal mask is shifted by the prefix length.
Every index and mask tensor is built once per step in `prepare`, not per layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .base import AttentionBackend, StepLayout


class AttentionLayoutError(ValueError):
    """A StepLayout that cannot describe a valid step."""


@dataclass
class DecodeBatch:
    """The decode sequences of a step, attended in one batched computation."""

    token_index: torch.Tensor  # [B] int64: where the decode tokens sit in the flat batch
    token_range: tuple[int, int] | None  # the same as a slice when they are contiguous
    gather_slots: torch.Tensor  # [B * max_ctx] int64 cache slots; padding points at slot 0
    key_padding: torch.Tensor | None  # [B, 1, 1, max_ctx] bool, True = padding; None if none
    batch_size: int
    max_context_len: int
    # Additive masks per dtype, made on first use (prepare does not know the dtype).
    additive_masks: dict[torch.dtype, torch.Tensor] = field(default_factory=dict)

    def additive_mask(self, dtype: torch.dtype) -> torch.Tensor | None:
        if self.key_padding is None:
            return None
        mask = self.additive_masks.get(dtype)
        if mask is None:
            mask = torch.zeros(self.key_padding.shape, dtype=dtype, device=self.key_padding.device)
            mask.masked_fill_(self.key_padding, float("-inf"))
            self.additive_masks[dtype] = mask
        return mask


@dataclass
class PrefillChunk:
    """One sequence computing more than one new token this step."""

    start: int  # first token of the chunk in the flat batch
    end: int  # one past its last token
    prefix_len: int  # tokens already in the cache before this step
    gather_slots: torch.Tensor | None  # [context_len] slots of the whole context; None if no prefix
    allowed: torch.Tensor | None  # [q_len, context_len] bool, True = may attend; None if no prefix


@dataclass
class TorchAttentionMetadata:
    num_tokens: int
    slot_mapping: torch.Tensor  # [num_tokens] int64
    decode: DecodeBatch | None
    prefills: list[PrefillChunk]


def validate_layout(layout: StepLayout) -> None:
    """Raise AttentionLayoutError when the layout is inconsistent."""
    n = len(layout.query_lens)
    if len(layout.context_lens) != n or len(layout.block_tables) != n:
        raise AttentionLayoutError(
            f"query_lens, context_lens and block_tables must have the same length, got "
            f"{n}, {len(layout.context_lens)}, {len(layout.block_tables)}"
        )
    if layout.block_size < 1:
        raise AttentionLayoutError(f"block_size must be >= 1, got {layout.block_size}")
    for i, (q_len, ctx_len, table) in enumerate(
        zip(layout.query_lens, layout.context_lens, layout.block_tables, strict=True)
    ):
        if q_len < 1:
            raise AttentionLayoutError(f"sequence {i}: query_len must be >= 1, got {q_len}")
        if ctx_len < q_len:
            raise AttentionLayoutError(
                f"sequence {i}: context_len {ctx_len} is smaller than query_len {q_len}"
            )
        needed_blocks = -(-ctx_len // layout.block_size)
        if len(table) < needed_blocks:
            raise AttentionLayoutError(
                f"sequence {i}: {ctx_len} tokens need {needed_blocks} blocks, block table has "
                f"{len(table)}"
            )


def _context_slots(table: list[int], context_len: int, block_size: int) -> list[int]:
    """Cache slots of positions 0..context_len-1 of one sequence."""
    slots: list[int] = []
    for block_index in range(-(-context_len // block_size)):
        base = table[block_index] * block_size
        slots.extend(range(base, base + block_size))
    return slots[:context_len]


def reference_mask(layout: StepLayout) -> torch.Tensor:
    """Dense float32 mask [num_tokens, sum(context_lens)] (0 = attend, -inf = masked).

    Keys are laid out sequence after sequence, each sequence's context in position order. A new
    token at absolute position p of sequence i attends to positions <= p of sequence i only.
    This is the semantics every backend implements; tests compare against it.
    """
    validate_layout(layout)
    mask = torch.full((layout.num_tokens, sum(layout.context_lens)), float("-inf"))
    row = 0
    col = 0
    for q_len, ctx_len in zip(layout.query_lens, layout.context_lens, strict=True):
        prefix_len = ctx_len - q_len
        for i in range(q_len):
            mask[row + i, col : col + prefix_len + i + 1] = 0.0
        row += q_len
        col += ctx_len
    return mask


class TorchAttentionBackend(AttentionBackend):
    name = "torch"

    def prepare(self, layout: StepLayout, device: torch.device) -> TorchAttentionMetadata:
        validate_layout(layout)
        bs = layout.block_size
        slot_mapping = torch.tensor(layout.slot_mapping(), dtype=torch.int64, device=device)

        decode_tokens: list[int] = []
        decode_slots: list[list[int]] = []
        prefills: list[PrefillChunk] = []
        start = 0
        for q_len, ctx_len, table in zip(
            layout.query_lens, layout.context_lens, layout.block_tables, strict=True
        ):
            if q_len == 1:
                decode_tokens.append(start)
                decode_slots.append(_context_slots(table, ctx_len, bs))
            else:
                prefills.append(self._prepare_prefill(start, q_len, ctx_len, table, bs, device))
            start += q_len

        decode = self._prepare_decode(decode_tokens, decode_slots, device) if decode_tokens else None
        return TorchAttentionMetadata(layout.num_tokens, slot_mapping, decode, prefills)

    @staticmethod
    def _prepare_prefill(
        start: int, q_len: int, ctx_len: int, table: list[int], bs: int, device: torch.device
    ) -> PrefillChunk:
        prefix_len = ctx_len - q_len
        if prefix_len == 0:
            return PrefillChunk(start, start + q_len, 0, None, None)
        slots = torch.tensor(_context_slots(table, ctx_len, bs), dtype=torch.int64, device=device)
        # Query i sits at absolute position prefix_len + i and sees keys 0..prefix_len + i.
        query_pos = torch.arange(prefix_len, ctx_len, device=device).unsqueeze(1)
        key_pos = torch.arange(ctx_len, device=device).unsqueeze(0)
        return PrefillChunk(start, start + q_len, prefix_len, slots, key_pos <= query_pos)

    @staticmethod
    def _prepare_decode(
        token_positions: list[int], slots_per_seq: list[list[int]], device: torch.device
    ) -> DecodeBatch:
        batch = len(token_positions)
        context_lens = [len(s) for s in slots_per_seq]
        max_ctx = max(context_lens)
        flat: list[int] = []
        for slots in slots_per_seq:
            flat.extend(slots)
            flat.extend([0] * (max_ctx - len(slots)))
        key_padding = None
        if min(context_lens) != max_ctx:
            lens = torch.tensor(context_lens, device=device)
            key_padding = (torch.arange(max_ctx, device=device).unsqueeze(0) >= lens.unsqueeze(1))
            key_padding = key_padding.view(batch, 1, 1, max_ctx)
        first = token_positions[0]
        contiguous = token_positions == list(range(first, first + batch))
        return DecodeBatch(
            token_index=torch.tensor(token_positions, dtype=torch.int64, device=device),
            token_range=(first, first + batch) if contiguous else None,
            gather_slots=torch.tensor(flat, dtype=torch.int64, device=device),
            key_padding=key_padding,
            batch_size=batch,
            max_context_len=max_ctx,
        )

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: TorchAttentionMetadata,
        scale: float,
    ) -> torch.Tensor:
        num_tokens, num_heads, head_dim = query.shape
        num_kv_heads = key.shape[1]
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
        if num_tokens != metadata.num_tokens:
            raise ValueError(f"query has {num_tokens} tokens, the step layout {metadata.num_tokens}")

        # [2, num_slots, kvh, d] view of the cache: slot-indexed writes and gathers.
        flat_cache = kv_cache.view(2, -1, num_kv_heads, head_dim)
        flat_cache[0].index_copy_(0, metadata.slot_mapping, key)
        flat_cache[1].index_copy_(0, metadata.slot_mapping, value)

        out = torch.empty_like(query)
        if metadata.decode is not None:
            self._decode(query, flat_cache, metadata.decode, scale, out)
        for chunk in metadata.prefills:
            out[chunk.start : chunk.end] = self._prefill(query, key, value, flat_cache, chunk, scale)
        return out

    @staticmethod
    def _decode(
        query: torch.Tensor,
        flat_cache: torch.Tensor,
        decode: DecodeBatch,
        scale: float,
        out: torch.Tensor,
    ) -> None:
        _, num_heads, head_dim = query.shape
        num_kv_heads = flat_cache.shape[2]
        group = num_heads // num_kv_heads
        batch, max_ctx = decode.batch_size, decode.max_context_len

        if decode.token_range is not None:
            q = query[decode.token_range[0] : decode.token_range[1]]
        else:
            q = query.index_select(0, decode.token_index)
        # [B, kvh, group, d]: the query heads that share a kv head sit together.
        q = q.view(batch, num_kv_heads, group, head_dim)

        kv = flat_cache.index_select(1, decode.gather_slots)  # [2, B*max_ctx, kvh, d]
        kv = kv.view(2, batch, max_ctx, num_kv_heads, head_dim).permute(0, 1, 3, 2, 4)
        k, v = kv[0], kv[1]  # [B, kvh, max_ctx, d]

        scores = torch.matmul(q, k.transpose(-1, -2))  # [B, kvh, group, max_ctx]
        scores.mul_(scale)
        mask = decode.additive_mask(scores.dtype)
        if mask is not None:
            scores.add_(mask)
        probs = torch.softmax(scores, dim=-1)
        result = torch.matmul(probs, v).view(batch, num_heads, head_dim)

        if decode.token_range is not None:
            out[decode.token_range[0] : decode.token_range[1]] = result
        else:
            out.index_copy_(0, decode.token_index, result)

    @staticmethod
    def _prefill(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        flat_cache: torch.Tensor,
        chunk: PrefillChunk,
        scale: float,
    ) -> torch.Tensor:
        q = query[chunk.start : chunk.end].transpose(0, 1)  # [H, q_len, d]
        if chunk.gather_slots is None:
            k = key[chunk.start : chunk.end].transpose(0, 1)
            v = value[chunk.start : chunk.end].transpose(0, 1)
            attn = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)
        else:
            k = flat_cache[0].index_select(0, chunk.gather_slots).transpose(0, 1)
            v = flat_cache[1].index_select(0, chunk.gather_slots).transpose(0, 1)
            attn = F.scaled_dot_product_attention(
                q, k, v, attn_mask=chunk.allowed, scale=scale, enable_gqa=True
            )
        return attn.transpose(0, 1)
