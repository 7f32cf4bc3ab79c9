"""Attention with xformers' memory-efficient kernels: CUDA only, float16/bfloat16.

xformers is imported when the backend is built, never at module import, so the engine runs
without it. The new tokens of a step are one flat batch; an `attn_bias` describes how it splits
into sequences:
- no sequence has a cached prefix (pure prefill): `BlockDiagonalCausalMask` over the new
  keys/values, the cache is only written;
- otherwise, when the block size allows it, the kernel reads keys/values straight from the paged
  cache through `PagedBlockDiagonalCausalWithOffsetPaddedKeysMask` (bottom-right causal, so new
  token i of a sequence sees its prefix plus new tokens 0..i);
- otherwise each sequence's context is gathered into a padded buffer and
  `BlockDiagonalCausalWithOffsetPaddedKeysMask` describes it.

Paged kernels constrain the page (block) size: flash-attention 2 needs a multiple of 256 and the
triton split-k kernel a multiple of its key block (up to 128), so the paged path is used by
default only when `block_size % 256 == 0` (the engine's default of 16 gathers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from .base import AttentionBackend, StepLayout
from .step_indices import padded_context_slots, slots_of, step_indices

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)
PAGED_BLOCK_MULTIPLE = 256

BiasKind = Literal["new_tokens", "paged", "gathered"]


def xformers_unavailable_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why the xformers backend cannot run for this device/dtype, or None when it can."""
    if device.type != "cuda":
        return f"it needs a CUDA device, got {device}"
    if not torch.cuda.is_available():
        return "CUDA is not available in this torch build or machine"
    if dtype not in SUPPORTED_DTYPES:
        return f"it supports float16 and bfloat16 only, got {dtype}"
    try:
        import xformers.ops  # noqa: F401
    except ImportError as exc:
        return f"xformers is not installed ({exc})"
    except Exception as exc:  # a build for another torch/CUDA can fail in any way at import
        return f"xformers does not import here ({type(exc).__name__}: {exc})"
    return probe_kernels(device, dtype)


def probe_kernels(device: torch.device, dtype: torch.dtype) -> str | None:
    """Run a tiny attention: an xformers build that does not match this torch/CUDA imports
    fine but has no working kernels."""
    from xformers.ops import fmha

    try:
        x = torch.zeros(1, 2, 1, 64, device=device, dtype=dtype)
        bias = fmha.attn_bias.BlockDiagonalCausalMask.from_seqlens([2], device=device)
        fmha.memory_efficient_attention_forward(x, x, x, attn_bias=bias)
    except Exception as exc:  # any failure means: do not use it
        return f"its kernels do not run here ({type(exc).__name__}: {exc})"
    return None


@dataclass
class XFormersAttentionMetadata:
    num_tokens: int
    block_size: int
    slot_mapping: torch.Tensor  # [num_tokens] int64
    kind: BiasKind
    attn_bias: Any  # an xformers AttentionBias
    # "gathered" only: cache slot of each position of each sequence's padded context,
    # [num_seqs * padded_context_len] int64 (padding repeats the sequence's first slot).
    gather_slots: torch.Tensor | None
    padded_context_len: int | None


class XFormersAttentionBackend(AttentionBackend):
    """`paged`: read K/V from the paged cache (True), gather them first (False), or decide
    from the block size (None: paged when block_size is a multiple of 256)."""

    name = "xformers"

    def __init__(self, paged: bool | None = None) -> None:
        try:
            from xformers.ops import fmha
        except ImportError as exc:
            raise ImportError(
                "the xformers attention backend needs the xformers package "
                "(pip install 'ziggurat-core[cuda]'), or use attention_backend='torch'"
            ) from exc
        self._fmha = fmha
        self.paged = paged

    def uses_paged_kernel(self, block_size: int) -> bool:
        if self.paged is not None:
            return self.paged
        return block_size % PAGED_BLOCK_MULTIPLE == 0

    def prepare(self, layout: StepLayout, device: torch.device) -> XFormersAttentionMetadata:
        layout.validate()
        biases = self._fmha.attn_bias
        bs = layout.block_size
        indices = step_indices(layout, device)
        slot_mapping = indices.slot_mapping
        has_prefix = any(c > q for q, c in zip(layout.query_lens, layout.context_lens, strict=True))

        if not has_prefix:
            bias = biases.BlockDiagonalCausalMask.from_seqlens(layout.query_lens, device=device)
            return XFormersAttentionMetadata(
                layout.num_tokens, bs, slot_mapping, "new_tokens", bias, None, None
            )
        if self.uses_paged_kernel(bs):
            bias = biases.PagedBlockDiagonalCausalWithOffsetPaddedKeysMask.from_seqlens(
                q_seqlen=layout.query_lens,
                kv_seqlen=layout.context_lens,
                block_tables=indices.block_tables.to(torch.int32),
                page_size=bs,
                device=device,
            )
            return XFormersAttentionMetadata(
                layout.num_tokens, bs, slot_mapping, "paged", bias, None, None
            )
        padded = max(layout.context_lens)
        bias = biases.BlockDiagonalCausalWithOffsetPaddedKeysMask.from_seqlens(
            q_seqlen=layout.query_lens,
            kv_padding=padded,
            kv_seqlen=layout.context_lens,
            device=device,
        )
        gather = padded_context_slots(indices.block_tables, indices.context_lens, padded, bs)
        return XFormersAttentionMetadata(
            layout.num_tokens, bs, slot_mapping, "gathered", bias, gather, padded
        )

    def prepare_decode(
        self,
        block_tables: torch.Tensor,
        context_lens: torch.Tensor,
        positions: torch.Tensor,
        block_size: int,
    ) -> XFormersAttentionMetadata:
        """The biases are assembled from device tensors instead of `from_seqlens` lists. Their
        Python-side lengths (what xformers sizes a kernel launch by) are the bounds of the
        shape, every key row full; the kernels read the true lengths from the `seqlen`
        tensor."""
        biases = self._fmha.attn_bias
        num_seqs, max_blocks = block_tables.shape
        device = block_tables.device
        padded = max_blocks * block_size
        seqs = torch.arange(num_seqs, device=device)
        slot_mapping = slots_of(block_tables, seqs, positions, block_size)
        q_starts = list(range(num_seqs + 1))
        q_seqinfo = biases._SeqLenInfo(
            seqstart=torch.arange(num_seqs + 1, dtype=torch.int32, device=device),
            max_seqlen=1, min_seqlen=1, seqstart_py=q_starts,
        )
        k_starts = list(range(0, (num_seqs + 1) * padded, padded))
        k_seqinfo = biases._PaddedSeqLenInfo(
            seqstart=torch.arange(0, (num_seqs + 1) * padded, padded, dtype=torch.int32, device=device),
            max_seqlen=padded, min_seqlen=1, seqstart_py=k_starts,
            seqlen=context_lens.to(torch.int32), seqlen_py=[padded] * num_seqs, padding=padded,
        )
        if self.uses_paged_kernel(block_size):
            bias = biases.PagedBlockDiagonalCausalWithOffsetPaddedKeysMask(
                q_seqinfo=q_seqinfo, k_seqinfo=k_seqinfo,
                block_tables=block_tables.to(torch.int32), page_size=block_size,
            )
            return XFormersAttentionMetadata(
                num_seqs, block_size, slot_mapping, "paged", bias, None, None
            )
        bias = biases.BlockDiagonalCausalWithOffsetPaddedKeysMask(
            q_seqinfo=q_seqinfo, k_seqinfo=k_seqinfo
        )
        gather = padded_context_slots(block_tables, context_lens, padded, block_size)
        return XFormersAttentionMetadata(
            num_seqs, block_size, slot_mapping, "gathered", bias, gather, padded
        )

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: XFormersAttentionMetadata,
        scale: float,
    ) -> torch.Tensor:
        # Checked before the cache write so a refused call changes nothing.
        if not query.is_cuda:
            raise ValueError(
                f"the xformers attention backend runs on CUDA tensors only, got {query.device}; "
                "use attention_backend='torch'"
            )
        if query.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"the xformers attention backend needs float16/bfloat16, got {query.dtype}")
        num_tokens, num_heads, head_dim = query.shape
        num_kv_heads = key.shape[1]
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
        if num_tokens != metadata.num_tokens:
            raise ValueError(f"query has {num_tokens} tokens, the step layout {metadata.num_tokens}")

        slots = kv_cache.view(2, -1, num_kv_heads, head_dim)
        slots[0].index_copy_(0, metadata.slot_mapping, key)
        slots[1].index_copy_(0, metadata.slot_mapping, value)

        if metadata.kind == "new_tokens":
            k, v = key, value
        elif metadata.kind == "paged":
            k, v = slots[0], slots[1]  # every slot of the cache; the block tables pick
        else:
            assert metadata.gather_slots is not None
            k = slots[0].index_select(0, metadata.gather_slots)
            v = slots[1].index_select(0, metadata.gather_slots)

        group = num_heads // num_kv_heads
        if group == 1:
            q5, k5, v5 = query.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0)
        else:
            # xformers takes GQA as [batch, tokens, kv_heads, group, head_dim] with K/V broadcast.
            q5 = query.reshape(1, num_tokens, num_kv_heads, group, head_dim)
            k5 = k.unsqueeze(0).unsqueeze(3).expand(1, k.shape[0], num_kv_heads, group, head_dim)
            v5 = v.unsqueeze(0).unsqueeze(3).expand(1, v.shape[0], num_kv_heads, group, head_dim)
        out = self._fmha.memory_efficient_attention_forward(
            q5, k5, v5, attn_bias=metadata.attn_bias, scale=scale
        )
        return out.reshape(num_tokens, num_heads, head_dim)
