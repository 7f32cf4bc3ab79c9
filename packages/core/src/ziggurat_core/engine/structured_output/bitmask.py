"""Applies a grammar's token bitmask to the logits of the constrained rows (torch)."""

from __future__ import annotations

import torch

from .manager import TokenBitmask


def apply_token_bitmask(logits: torch.Tensor, mask: TokenBitmask) -> None:
    """In place: the tokens `mask` does not allow get -inf in its rows of `logits` ([B, V]).

    Done before anything reads the logits, so sampling, penalties, logit_bias and logprobs all
    see the grammar's distribution. Logit columns past the bitmask's width (a vocabulary padded
    beyond llguidance's) are not allowed."""
    words = torch.from_numpy(mask.bits).to(logits.device, non_blocking=True)
    shifts = torch.arange(32, dtype=torch.int32, device=logits.device)
    # Bit t of a row is bit t % 32 of word t // 32 (llguidance's little-endian layout); an
    # arithmetic shift of a negative word still leaves the right bit in place 0.
    allowed = ((words.unsqueeze(-1) >> shifts) & 1).bool().flatten(1)
    width = logits.shape[1]
    if allowed.shape[1] < width:
        allowed = torch.nn.functional.pad(allowed, (0, width - allowed.shape[1]), value=False)
    rows = torch.tensor(mask.rows, dtype=torch.int64, device=logits.device)
    selected = logits.index_select(0, rows)
    selected.masked_fill_(~allowed[:, :width], float("-inf"))
    logits.index_copy_(0, rows, selected)
