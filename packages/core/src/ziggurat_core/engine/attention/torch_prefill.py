"""The portable backend's torch prefill path (no C kernel: CUDA, other dtypes, or no build).

Prefill chunks are attended one sequence at a time, over the new keys/values as they are when
nothing is cached before them, else over the whole context gathered from the cache (the causal
mask shifted by the prefix length). On CPU this is explicit batched matmuls over blocks of
`prefill_block_rows` query rows, each against only the keys up to its last row (faster than CPU
scaled_dot_product_attention on long prompts, which computes the masked half too); elsewhere it
is SDPA.

A cache narrower than the model's dtype holds the values rounded: a prefill with nothing cached
before it attends over its new keys/values rounded the same way, so a sequence sees the same
values whichever way its prompt is split into chunks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .torch_metadata import PortableAttentionMetadata, PrefillChunk


class TorchPrefill:
    """Attention of a step's prefill chunks. Holds the upper-triangle masks of the blocked
    matmul path, made once per (dtype, device) and shared by every step."""

    def __init__(self) -> None:
        self._triangles: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    def __call__(
        self,
        query: torch.Tensor,  # [tokens, H, d]
        key: torch.Tensor,  # [tokens, kvh, d]
        value: torch.Tensor,
        kv_cache: torch.Tensor,  # the step's keys/values already written
        metadata: PortableAttentionMetadata,
        scale: float,
        out: torch.Tensor,  # [tokens, H, d]: the prefill chunks' rows are written
    ) -> None:
        num_kv_heads, head_dim = key.shape[1], key.shape[2]
        slots = kv_cache.view(2, -1, num_kv_heads, head_dim)  # [2, num_slots, kvh, d]
        converted = kv_cache.dtype != key.dtype  # stored in the cache dtype (rounded if narrower)
        for chunk in metadata.prefills:
            if chunk.context_slots is None:
                k = key[chunk.start : chunk.end]
                v = value[chunk.start : chunk.end]
                if converted:  # the values as stored, as any later chunk or decode reads them
                    k = k.to(kv_cache.dtype).to(query.dtype)
                    v = v.to(kv_cache.dtype).to(query.dtype)
            else:
                # [context_len, kvh, d], in the query's dtype
                k = slots[0].index_select(0, chunk.context_slots).to(query.dtype)
                v = slots[1].index_select(0, chunk.context_slots).to(query.dtype)
            q = query[chunk.start : chunk.end]
            if metadata.prefill_block_rows is None:
                out[chunk.start : chunk.end] = prefill_sdpa(q, k, v, chunk, scale)
            else:
                self.prefill_blocked(
                    q, k, v, chunk.prefix_len, scale, metadata.prefill_block_rows,
                    out[chunk.start : chunk.end],
                )

    def prefill_blocked(
        self,
        query: torch.Tensor,  # [q_len, H, d]
        key: torch.Tensor,  # [context_len, kvh, d]
        value: torch.Tensor,
        prefix_len: int,
        scale: float,
        block_rows: int,
        out: torch.Tensor,  # [q_len, H, d], written
    ) -> None:
        q_len, num_heads, head_dim = query.shape
        num_kv_heads = key.shape[1]
        group = num_heads // num_kv_heads
        triangle = self.triangle(min(block_rows, q_len), query.dtype, query.device)
        # Per kv head: its `group` query heads stacked as rows, so GQA needs no K/V copies.
        q_heads = query.view(q_len, num_kv_heads, group, head_dim).permute(1, 2, 0, 3)
        keys_t = key.permute(1, 2, 0)  # [kvh, d, context_len]
        values = value.transpose(0, 1)  # [kvh, context_len, d]
        for first in range(0, q_len, block_rows):
            end = min(q_len, first + block_rows)
            rows = end - first
            visible = prefix_len + end  # keys up to the block's last position
            q = (q_heads[:, :, first:end] * scale).reshape(num_kv_heads, group * rows, head_dim)
            scores = torch.bmm(q, keys_t[:, :, :visible]).view(num_kv_heads, group, rows, visible)
            # Keys before the block are all visible; the block's own ones form a triangle.
            scores[..., prefix_len + first :].add_(triangle[:rows, :rows])
            probs = torch.softmax(scores, dim=-1).view(num_kv_heads, group * rows, visible)
            result = torch.bmm(probs, values[:, :visible])  # [kvh, group * rows, d]
            result = result.view(num_kv_heads, group, rows, head_dim).permute(2, 0, 1, 3)
            out[first:end].view(rows, num_kv_heads, group, head_dim).copy_(result)

    def triangle(self, size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """[size, size] additive mask, -inf above the diagonal; one per (dtype, device)."""
        tri = self._triangles.get((dtype, device))
        if tri is None or tri.shape[0] < size:
            tri = torch.full((size, size), float("-inf"), dtype=dtype, device=device).triu_(1)
            self._triangles[(dtype, device)] = tri
        return tri


def prefill_sdpa(
    query: torch.Tensor,  # [q_len, H, d]
    key: torch.Tensor,  # [context_len, kvh, d]
    value: torch.Tensor,
    chunk: PrefillChunk,
    scale: float,
) -> torch.Tensor:
    gqa = query.shape[1] != key.shape[1]
    q, k, v = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
    if chunk.mask is None:  # nothing cached before: plain causal
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    else:
        mask = chunk.mask.for_dtype(q.dtype)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)
    return attn.transpose(0, 1)
