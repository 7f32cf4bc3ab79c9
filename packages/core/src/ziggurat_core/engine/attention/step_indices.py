"""A step's cache indices as tensor ops on the device, from the block tables and lengths.

Only per-sequence values (lengths, block tables: O(blocks)) cross from Python to the device;
every per-token or per-context-position index (cache slots, gather indices) is computed there,
so a step never builds a Python list of every context slot. On CUDA the small host tensors are
made in pinned memory and copied asynchronously, so preparing a step never waits for the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..device import host_to_device
from .base import StepLayout


def padded_block_tables(layout: StepLayout) -> list[list[int]]:
    """Each sequence's blocks that hold its context, padded with block 0 to the longest (padding
    is never read: every index below stays within a sequence's context)."""
    bs = layout.block_size
    used = [t[: -(-c // bs)] for t, c in zip(layout.block_tables, layout.context_lens, strict=True)]
    width = max(len(u) for u in used)
    return [u + [0] * (width - len(u)) for u in used]


def slots_of(block_tables: torch.Tensor, seqs: torch.Tensor, positions: torch.Tensor,
             block_size: int) -> torch.Tensor:
    """Cache slot of position `positions[i]` of sequence `seqs[i]` (any matching shapes)."""
    return block_tables[seqs, positions // block_size] * block_size + positions % block_size


def padded_context_slots(block_tables: torch.Tensor, context_lens: torch.Tensor, padded: int,
                         block_size: int) -> torch.Tensor:
    """[num_seqs * padded] slots of every sequence's positions 0..padded-1, each position past
    its context replaced by position 0 (finite data the attention bias masks out)."""
    num_seqs = block_tables.shape[0]
    positions = torch.arange(padded, device=block_tables.device).expand(num_seqs, padded)
    positions = positions.masked_fill(positions >= context_lens.unsqueeze(1), 0)
    seqs = torch.arange(num_seqs, device=block_tables.device).unsqueeze(1).expand(num_seqs, padded)
    return slots_of(block_tables, seqs, positions, block_size).reshape(-1)


def context_slots(block_table: torch.Tensor, context_len: int, block_size: int) -> torch.Tensor:
    """[context_len] slots of positions 0..context_len-1 of one sequence (`block_table`: its
    row of the step's block tables, on the device)."""
    positions = torch.arange(context_len, device=block_table.device)
    return block_table[positions // block_size] * block_size + positions % block_size


@dataclass(frozen=True)
class StepIndices:
    """A step's per-sequence inputs on the device and the per-token indices made from them."""

    block_tables: torch.Tensor  # [num_seqs, max_blocks] int64 (padded_block_tables)
    query_lens: torch.Tensor  # [num_seqs] int64
    context_lens: torch.Tensor  # [num_seqs] int64
    token_seqs: torch.Tensor  # [num_tokens] int64: the sequence of each new token
    positions: torch.Tensor  # [num_tokens] int64: its position in that sequence
    slot_mapping: torch.Tensor  # [num_tokens] int64: the cache slot it is written to


def step_indices(layout: StepLayout, device: torch.device) -> StepIndices:
    """The step's indices on `device`; `layout` is validated by the caller."""
    tables = host_to_device(padded_block_tables(layout), torch.int64, device)
    query_lens = host_to_device(layout.query_lens, torch.int64, device)
    context_lens = host_to_device(layout.context_lens, torch.int64, device)
    num_tokens = layout.num_tokens
    seq_ids = torch.arange(len(layout.query_lens), device=device)
    # output_size: the length is known here, so repeat_interleave need not read it back.
    token_seqs = torch.repeat_interleave(seq_ids, query_lens, output_size=num_tokens)
    first_row = torch.cumsum(query_lens, 0) - query_lens  # flat-batch row of each first token
    first_position = context_lens - query_lens  # its position in its sequence
    rows = torch.arange(num_tokens, device=device)
    positions = first_position[token_seqs] + rows - first_row[token_seqs]
    slots = slots_of(tables, token_seqs, positions, layout.block_size)
    return StepIndices(tables, query_lens, context_lens, token_seqs, positions, slots)
