"""The portable backend's torch decode path (no C kernel: CUDA, other dtypes, or no build).

Decodes (one new token per sequence) are batched. Their KV blocks are gathered from the paged
cache, whole blocks at a time (one large copy per block rather than one small one per token),
into a reused workspace, and one scaled_dot_product_attention call covers a chunk of sequences,
with the query heads that share a kv head folded into the query-length axis (GQA without copying
kv heads). How the sequences are chunked (small chunks on CPU, so the gathered copy is still in
the core's cache when attention reads it) is decided by `DecodeBatch` (torch_metadata.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .torch_metadata import DecodeBatch


class GatheredDecode:
    """Attention of a step's decode tokens over their gathered contexts. Holds the gather
    workspace, reused by every call (one per backend instance, not shared between threads)."""

    def __init__(self) -> None:
        # Reused across layers and steps: a fresh multi-MB tensor per layer costs page faults.
        self._workspace: torch.Tensor | None = None

    def __call__(
        self, query: torch.Tensor, kv_cache: torch.Tensor, decode: DecodeBatch, scale: float
    ) -> torch.Tensor:
        """[decode tokens, H, d]: row i for the decode token at `decode.token_index[i]` of
        `query` ([tokens, H, d]), attending over its sequence's context in `kv_cache`."""
        _, num_heads, head_dim = query.shape
        _, num_blocks, block_size, num_kv_heads, _ = kv_cache.shape
        group = num_heads // num_kv_heads
        block_numel = block_size * num_kv_heads * head_dim
        # A narrower cache is widened after the gather: size chunks by the wider copy.
        element = max(kv_cache.element_size(), query.element_size())
        chunks = decode.chunks(2 * num_kv_heads * head_dim * element)
        blocks = kv_cache.view(2, num_blocks, block_numel)
        max_blocks = max(c.num_seqs * c.blocks_per_seq for c in chunks)
        workspace = self._get_workspace(2 * max_blocks * block_numel, kv_cache)

        # [B, kvh, group, d]: one decode token's heads that share a kv head act as `group`
        # query rows against it, so SDPA needs no GQA expansion.
        q = query.index_select(0, decode.token_index).view(-1, num_kv_heads, group, head_dim)
        out = torch.empty_like(q)
        for chunk in chunks:
            n = chunk.num_seqs
            gathered = workspace[: 2 * n * chunk.blocks_per_seq * block_numel]
            gathered = gathered.view(2, n * chunk.blocks_per_seq, block_numel)
            torch.index_select(blocks, 1, chunk.block_ids, out=gathered)
            kv = gathered.view(2, n, chunk.blocks_per_seq * block_size, num_kv_heads, head_dim)
            kv = kv.transpose(2, 3).to(q.dtype)  # [2, n, kvh, ctx, d]
            mask = None if chunk.mask is None else chunk.mask.for_dtype(q.dtype)
            out[chunk.start : chunk.end] = F.scaled_dot_product_attention(
                q[chunk.start : chunk.end], kv[0], kv[1], attn_mask=mask, scale=scale
            )
        return out.view(-1, num_heads, head_dim)

    def _get_workspace(self, numel: int, like: torch.Tensor) -> torch.Tensor:
        ws = self._workspace
        if ws is None or ws.numel() < numel or ws.dtype != like.dtype or ws.device != like.device:
            ws = torch.empty(numel, dtype=like.dtype, device=like.device)
            self._workspace = ws
        return ws
