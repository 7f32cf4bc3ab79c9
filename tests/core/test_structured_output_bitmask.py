"""The grammar bitmask applied to logits: llguidance's bit layout, both unpacking paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ziggurat_core.engine.structured_output.bitmask import (
    apply_token_bitmask,
    forbidden_by_numpy,
    forbidden_by_torch,
)
from ziggurat_core.engine.structured_output.manager import TokenBitmask


def bitmask_allowing(allowed: list[set[int]], vocab: int) -> np.ndarray:
    """Written bit by bit from llguidance's documented layout (bit t % 32 of word t // 32)."""
    words = np.zeros((len(allowed), (vocab + 31) // 32), dtype=np.uint32)
    for row, tokens in enumerate(allowed):
        for token in tokens:
            words[row, token // 32] |= np.uint32(1) << np.uint32(token % 32)
    return words.view(np.int32)


ALLOWED = [{0, 31, 32, 63, 69}, {5}, set(range(64, 70))]


def test_both_unpacking_paths_agree_with_the_layout() -> None:
    bits = bitmask_allowing(ALLOWED, 70)
    for forbidden in (forbidden_by_numpy(bits), forbidden_by_torch(torch.from_numpy(bits))):
        assert forbidden.shape == (3, 96) and forbidden.dtype == torch.bool
        for row, tokens in enumerate(ALLOWED):
            assert set(torch.nonzero(~forbidden[row]).flatten().tolist()) == tokens


@pytest.mark.parametrize(("num_rows", "rows"), [(3, [0, 1, 2]), (4, [0, 2, 3])])
def test_only_the_constrained_rows_are_masked_and_padding_columns_are_forbidden(
    num_rows: int, rows: list[int]
) -> None:
    vocab, width = 70, 80  # logits wider than the grammar's vocabulary: columns 70.. are padding
    logits = torch.randn(num_rows, width)
    original = logits.clone()
    apply_token_bitmask(logits, TokenBitmask(bitmask_allowing(ALLOWED, vocab), rows))
    for i, row in enumerate(rows):
        finite = set(torch.nonzero(torch.isfinite(logits[row])).flatten().tolist())
        assert finite == ALLOWED[i]
        kept = sorted(ALLOWED[i])
        assert torch.equal(logits[row, kept], original[row, kept])
    for row in set(range(num_rows)) - set(rows):
        assert torch.equal(logits[row], original[row])
