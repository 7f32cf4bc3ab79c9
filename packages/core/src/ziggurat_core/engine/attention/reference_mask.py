"""The dense attention mask every backend's semantics are defined by (tests compare with it)."""

from __future__ import annotations

import torch

from .base import StepLayout


def reference_mask(layout: StepLayout) -> torch.Tensor:
    """Dense float32 mask [num_tokens, sum(context_lens)] (0 = attend, -inf = masked).

    Keys are laid out sequence after sequence, each sequence's context in position order. A new
    token at absolute position p of sequence i attends to positions <= p of sequence i only.
    This is the semantics every backend implements; tests compare against it.
    """
    layout.validate()
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
