"""Applies a grammar's token bitmask to the logits of the constrained rows (torch)."""

from __future__ import annotations

import numpy as np
import torch

from ..device import host_to_device, move_to_device
from .manager import TokenBitmask


def apply_token_bitmask(logits: torch.Tensor, mask: TokenBitmask) -> None:
    """In place: the tokens `mask` does not allow get -inf in its rows of `logits` ([B, V]).

    Done before anything reads the logits, so sampling, penalties, logit_bias and logprobs all
    see the grammar's distribution. Logit columns past the bitmask's width (a vocabulary padded
    beyond llguidance's) are not allowed."""
    width = logits.shape[1]
    forbidden = _forbidden(mask.bits, logits.device)
    if forbidden.shape[1] < width:
        forbidden = torch.nn.functional.pad(forbidden, (0, width - forbidden.shape[1]), value=True)
    forbidden = forbidden[:, :width]
    if len(mask.rows) == logits.shape[0]:  # rows are in order: every row is constrained
        logits.masked_fill_(forbidden, float("-inf"))
        return
    rows = host_to_device(mask.rows, torch.int64, logits.device)
    logits.index_copy_(0, rows, logits.index_select(0, rows).masked_fill_(forbidden, float("-inf")))


def _forbidden(bits: np.ndarray, device: torch.device) -> torch.Tensor:
    """[R, 32 * words] bool: True where a token is NOT allowed. Bit t of a row is bit t % 32 of
    word t // 32 (llguidance's little-endian layout)."""
    if device.type == "cpu":
        # numpy unpacks bits several times faster than shifting int32 words in torch on CPU.
        return forbidden_by_numpy(bits)
    return forbidden_by_torch(move_to_device(torch.from_numpy(bits), device))


def forbidden_by_numpy(bits: np.ndarray) -> torch.Tensor:
    unpacked = np.unpackbits((~bits).view(np.uint8), axis=1, bitorder="little")
    return torch.from_numpy(unpacked).view(torch.bool)


def forbidden_by_torch(words: torch.Tensor) -> torch.Tensor:
    """The same on the words' device (a GPU unpacks them where the logits are)."""
    shifts = torch.arange(32, dtype=torch.int32, device=words.device)
    # An arithmetic shift of a negative word still leaves the wanted bit in place 0.
    return ((words.unsqueeze(-1) >> shifts) & 1).flatten(1) == 0
