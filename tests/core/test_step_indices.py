"""Cache indices made with tensor ops from block tables and lengths (attention/step_indices.py)
equal the per-slot Python loops they replace, on random block tables."""

from __future__ import annotations

import random

import pytest
import torch
from ziggurat_core.engine.attention.base import StepLayout
from ziggurat_core.engine.attention.step_indices import (
    context_slots,
    padded_context_slots,
    step_indices,
)
from ziggurat_core.engine.attention.torch_backend import PortableAttentionBackend
from ziggurat_core.engine.device import host_to_device

CPU = torch.device("cpu")


def random_layout(rng: random.Random) -> StepLayout:
    """Sequences with random cached prefixes and new tokens, over shuffled blocks; tables may
    hold more blocks than the context needs (the scheduler allocates ahead)."""
    block_size = rng.choice([1, 2, 4, 16, 256])
    seqs = [(rng.choice([0, rng.randrange(600)]), rng.choice([1, 1, rng.randrange(1, 70)]))
            for _ in range(rng.randrange(1, 9))]
    counts = [-(-(p + n) // block_size) + rng.randrange(2) for p, n in seqs]
    ids = list(range(sum(counts)))
    rng.shuffle(ids)
    tables = []
    for count in counts:
        tables.append(ids[:count])
        ids = ids[count:]
    return StepLayout([n for _, n in seqs], [p + n for p, n in seqs], tables, block_size)


# The loops these indices once were, kept here as the reference.
def slot_of(table: list[int], position: int, block_size: int) -> int:
    return table[position // block_size] * block_size + position % block_size


def reference_context_slots(table: list[int], context_len: int, block_size: int) -> list[int]:
    return [slot_of(table, p, block_size) for p in range(context_len)]


def reference_padded_slots(layout: StepLayout, padded: int) -> list[int]:
    slots: list[int] = []
    for table, ctx_len in zip(layout.block_tables, layout.context_lens, strict=True):
        seq_slots = reference_context_slots(table, ctx_len, layout.block_size)
        slots.extend(seq_slots + [seq_slots[0]] * (padded - ctx_len))
    return slots


LAYOUTS = [random_layout(random.Random(seed)) for seed in range(40)]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_step_indices_equal_the_python_loops(layout: StepLayout) -> None:
    layout.validate()
    indices = step_indices(layout, CPU)
    assert indices.slot_mapping.tolist() == layout.slot_mapping()
    positions = [p for q, c in zip(layout.query_lens, layout.context_lens, strict=True)
                 for p in range(c - q, c)]
    assert indices.positions.tolist() == positions
    seqs = [i for i, q in enumerate(layout.query_lens) for _ in range(q)]
    assert indices.token_seqs.tolist() == seqs
    assert indices.context_lens.tolist() == layout.context_lens
    assert indices.query_lens.tolist() == layout.query_lens


@pytest.mark.parametrize("layout", LAYOUTS)
def test_gather_indices_equal_the_python_loops(layout: StepLayout) -> None:
    indices = step_indices(layout, CPU)
    padded = max(layout.context_lens)
    got = padded_context_slots(indices.block_tables, indices.context_lens, padded, layout.block_size)
    assert got.tolist() == reference_padded_slots(layout, padded)
    for seq, (table, ctx_len) in enumerate(zip(layout.block_tables, layout.context_lens, strict=True)):
        slots = context_slots(indices.block_tables[seq], ctx_len, layout.block_size)
        assert slots.tolist() == reference_context_slots(table, ctx_len, layout.block_size)


def test_block_tables_hold_only_the_blocks_of_the_context() -> None:
    layout = StepLayout([1, 3], [5, 3], [[7, 2, 9], [4, 8]], 4)
    assert step_indices(layout, CPU).block_tables.tolist() == [[7, 2], [4, 0]]


def test_host_data_reaches_the_device_as_given() -> None:
    tensor = host_to_device([[1, 2], [3, 4]], torch.int32, CPU)
    assert tensor.dtype == torch.int32 and tensor.tolist() == [[1, 2], [3, 4]]


@pytest.mark.parametrize("seed", range(6))
def test_torch_backend_attends_the_same_from_device_indices(seed: int) -> None:
    """The torch backend builds its indices with tensor ops off the CPU; the same step on CPU
    with those indices attends exactly as with the host loops."""
    layout = random_layout(random.Random(100 + seed))
    num_blocks = max(max(t) for t in layout.block_tables) + 1
    gen = torch.Generator().manual_seed(seed)
    cache = torch.randn(2, num_blocks, layout.block_size, 2, 8, generator=gen)
    q = torch.randn(layout.num_tokens, 4, 8, generator=gen)
    k = torch.randn(layout.num_tokens, 2, 8, generator=gen)
    v = torch.randn(layout.num_tokens, 2, 8, generator=gen)
    outputs = []
    for host_indices in (True, False):
        backend = PortableAttentionBackend(decode_kernel=False)
        metadata = backend.prepare_indexed(layout, CPU, host_indices=host_indices)
        step_cache = cache.clone()
        outputs.append((backend.forward(q, k, v, step_cache, metadata, 0.3), step_cache))
    assert torch.equal(outputs[0][0], outputs[1][0])
    assert torch.equal(outputs[0][1], outputs[1][1])
