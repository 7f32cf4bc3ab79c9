"""Unit tests for the paged KV block manager and its prefix cache."""

from __future__ import annotations

import pytest
from ziggurat_core.engine import block_manager as block_manager_module
from ziggurat_core.engine.block_manager import BlockAccountingError, BlockManager
from ziggurat_core.engine.sampling_params import SamplingParams
from ziggurat_core.engine.sequence import SequenceState


def make_seq(token_ids: list[int], request_id: str = "r") -> SequenceState:
    return SequenceState(request_id, token_ids, SamplingParams())


def allocate_and_compute(bm: BlockManager, token_ids: list[int]) -> SequenceState:
    """Allocate a sequence and pretend the model computed its whole prompt."""
    seq = make_seq(token_ids)
    assert bm.can_allocate(seq)
    bm.allocate(seq)
    seq.num_computed_tokens = len(seq)
    bm.mark_computed(seq)
    return seq


def snapshot(bm: BlockManager, *seqs: SequenceState) -> tuple:
    return (
        sorted(bm.free_block_ids()),
        [bm.ref_count(b) for b in range(bm.num_blocks)],
        bm.stats(),
        [(list(s.block_table), s.num_computed_tokens, s.num_cached_tokens) for s in seqs],
    )


def test_allocate_gives_distinct_blocks_for_all_tokens() -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    seq = make_seq(list(range(10)))
    bm.allocate(seq)
    assert len(seq.block_table) == 3  # ceil(10 / 4)
    assert len(set(seq.block_table)) == 3
    assert bm.num_free_blocks == 5
    assert all(bm.ref_count(b) == 1 for b in seq.block_table)
    assert seq.num_computed_tokens == 0 and seq.num_cached_tokens == 0


def test_second_sequence_with_same_prompt_shares_cached_blocks() -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    prompt = list(range(10))
    first = allocate_and_compute(bm, prompt)
    second = make_seq(prompt)
    bm.allocate(second)
    assert second.num_cached_tokens == 8
    assert second.num_computed_tokens == 8
    assert second.block_table[:2] == first.block_table[:2]
    assert second.block_table[2] != first.block_table[2]  # the partial block is its own
    assert [bm.ref_count(b) for b in first.block_table] == [2, 2, 1]
    assert bm.num_free_blocks == 8 - 4


def test_hit_never_covers_the_last_token() -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    prompt = list(range(8))  # exactly two full blocks
    allocate_and_compute(bm, prompt)
    again = make_seq(prompt)
    bm.allocate(again)
    # The last block must be recomputed so the step produces logits for the next token.
    assert again.num_cached_tokens == 4
    assert len(again.block_table) == 2


def test_only_the_common_prefix_hits() -> None:
    bm = BlockManager(num_blocks=16, block_size=4)
    first = allocate_and_compute(bm, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13])
    other = make_seq([1, 2, 3, 4, 5, 6, 7, 0, 9, 10, 11, 12, 13])
    bm.allocate(other)
    assert other.num_cached_tokens == 4
    assert other.block_table[0] == first.block_table[0]
    assert set(other.block_table[1:]).isdisjoint(first.block_table)


def test_same_block_tokens_after_a_different_prefix_do_not_hit() -> None:
    bm = BlockManager(num_blocks=16, block_size=4)
    allocate_and_compute(bm, [1, 1, 1, 1, 5, 6, 7, 8, 9])
    other = make_seq([2, 2, 2, 2, 5, 6, 7, 8, 9])
    bm.allocate(other)
    assert other.num_cached_tokens == 0


def test_blocks_not_yet_computed_are_not_hit() -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    prompt = list(range(10))
    first = make_seq(prompt)
    bm.allocate(first)
    first.num_computed_tokens = 5  # only the first block is full and computed
    bm.mark_computed(first)
    second = make_seq(prompt)
    bm.allocate(second)
    assert second.num_cached_tokens == 4
    assert bm.stats().num_cached_blocks == 1


def test_freed_cached_blocks_are_revived_by_a_hit() -> None:
    bm = BlockManager(num_blocks=6, block_size=4)
    prompt = list(range(10))
    first = allocate_and_compute(bm, prompt)
    shared = first.block_table[:2]
    bm.free(first)
    assert first.block_table == []
    assert bm.num_free_blocks == 6
    second = make_seq(prompt)
    bm.allocate(second)
    assert second.block_table[:2] == shared
    assert all(bm.ref_count(b) == 1 for b in second.block_table)
    assert not set(second.block_table) & set(bm.free_block_ids())
    assert bm.num_free_blocks == 3


def test_uncached_free_blocks_go_before_cached_ones_and_cached_ones_leave_lru() -> None:
    bm = BlockManager(num_blocks=6, block_size=2)
    prompt_a = [1, 1, 2, 2, 3]  # two full blocks + one partial
    prompt_c = [7, 7, 8, 8, 9]
    bm.free(allocate_and_compute(bm, prompt_a))
    bm.free(allocate_and_compute(bm, prompt_c))  # freed after A: A's blocks are older
    assert bm.stats().num_cached_blocks == 4

    # Two fresh blocks come from the two uncached free blocks (the partial tails).
    small = make_seq([5, 5, 5])
    bm.allocate(small)
    assert bm.stats().num_cached_blocks == 4
    assert bm.cached_prefix_len(make_seq(prompt_a)) == 4
    assert bm.cached_prefix_len(make_seq(prompt_c)) == 4
    bm.free(small)

    # Four fresh blocks: two uncached, then the least recently freed cached ones (A's).
    big = make_seq([6] * 8)
    bm.allocate(big)
    assert bm.stats().num_cached_blocks == 2
    assert bm.cached_prefix_len(make_seq(prompt_a)) == 0
    assert bm.cached_prefix_len(make_seq(prompt_c)) == 4


def test_free_evicts_the_tail_of_a_chain_first() -> None:
    bm = BlockManager(num_blocks=3, block_size=2)
    prompt = [1, 2, 3, 4, 5]
    bm.free(allocate_and_compute(bm, prompt))
    # One uncached block (the partial tail) and two cached; taking two evicts one cached block.
    bm.allocate(make_seq([9, 9, 9]))
    # The surviving block is the head of the chain, so the prefix still half hits.
    assert bm.cached_prefix_len(make_seq(prompt)) == 2


def test_refused_allocate_leaves_state_untouched() -> None:
    bm = BlockManager(num_blocks=4, block_size=2)
    holder = make_seq([1, 2, 3])
    bm.allocate(holder)
    too_big = make_seq(list(range(6)))  # needs 3 blocks, 2 free
    before = snapshot(bm, holder, too_big)
    assert not bm.can_allocate(too_big)
    with pytest.raises(BlockAccountingError):
        bm.allocate(too_big)
    assert snapshot(bm, holder, too_big) == before


def test_can_allocate_counts_revived_cached_hits_against_the_free_pool() -> None:
    bm = BlockManager(num_blocks=4, block_size=2)
    prefix = [1, 2, 3, 4]
    bm.free(allocate_and_compute(bm, prefix + [5]))  # 2 cached free blocks + 2 uncached free
    other = make_seq([9, 9])
    bm.allocate(other)  # takes an uncached block: 3 free, 2 of them the cached prefix
    wanted = make_seq(prefix + [6, 7, 8])  # 4 blocks: 2 hits (both in the free pool) + 2 fresh
    before = snapshot(bm, other, wanted)
    assert not bm.can_allocate(wanted)
    with pytest.raises(BlockAccountingError):
        bm.allocate(wanted)
    assert snapshot(bm, other, wanted) == before
    bm.free(other)
    assert bm.can_allocate(wanted)
    bm.allocate(wanted)
    assert wanted.num_cached_tokens == 4
    assert bm.num_free_blocks == 0


def test_append_adds_blocks_only_at_block_boundaries() -> None:
    bm = BlockManager(num_blocks=3, block_size=4)
    seq = make_seq([1, 2, 3, 4])
    bm.allocate(seq)
    seq.num_computed_tokens = 4
    seq.append_token(5)
    assert bm.can_append(seq, 1)
    bm.append(seq, 1)
    assert len(seq.block_table) == 2
    bm.append(seq, 1)  # position 4 already has a block
    assert len(seq.block_table) == 2
    seq.num_computed_tokens = 5
    bm.append(seq, 3)  # positions 5..7 fit in the second block
    assert len(seq.block_table) == 2
    bm.append(seq, 4)  # positions 5..8: a third block
    assert len(seq.block_table) == 3
    assert bm.num_free_blocks == 0


def test_refused_append_leaves_state_untouched() -> None:
    bm = BlockManager(num_blocks=2, block_size=2)
    seq = make_seq([1, 2, 3, 4])
    bm.allocate(seq)
    seq.num_computed_tokens = 4
    seq.append_token(5)
    before = snapshot(bm, seq)
    assert not bm.can_append(seq, 1)
    with pytest.raises(BlockAccountingError):
        bm.append(seq, 1)
    assert snapshot(bm, seq) == before


def test_append_to_an_unallocated_sequence_raises() -> None:
    bm = BlockManager(num_blocks=2, block_size=2)
    with pytest.raises(BlockAccountingError):
        bm.can_append(make_seq([1]), 1)


def test_allocate_twice_and_empty_sequence_raise() -> None:
    bm = BlockManager(num_blocks=4, block_size=2)
    seq = make_seq([1, 2, 3])
    bm.allocate(seq)
    with pytest.raises(BlockAccountingError):
        bm.allocate(seq)
    with pytest.raises(ValueError):
        bm.allocate(make_seq([]))


def test_double_free_of_a_block_raises() -> None:
    bm = BlockManager(num_blocks=4, block_size=2)
    seq = make_seq([1, 2, 3])
    bm.allocate(seq)
    table = list(seq.block_table)
    bm.free(seq)
    assert bm.num_free_blocks == 4
    bm.free(seq)  # the table is empty now: nothing to do
    assert bm.num_free_blocks == 4
    seq.block_table = table  # a stale table referencing freed blocks
    with pytest.raises(BlockAccountingError):
        bm.free(seq)
    assert all(bm.ref_count(b) == 0 for b in range(4))

    # A stale table whose first blocks are live again: nothing may be decremented.
    other = make_seq([4, 5, 6])
    bm.allocate(other)
    seq.block_table = [*other.block_table, *(b for b in range(4) if b not in other.block_table)]
    before = snapshot(bm, other)
    with pytest.raises(BlockAccountingError):
        bm.free(seq)
    assert snapshot(bm, other) == before


def test_prefix_caching_disabled_never_hits() -> None:
    bm = BlockManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    prompt = list(range(10))
    first = allocate_and_compute(bm, prompt)
    second = make_seq(prompt)
    bm.allocate(second)
    assert second.num_cached_tokens == 0
    assert set(first.block_table).isdisjoint(second.block_table)
    stats = bm.stats()
    assert stats.num_cached_blocks == 0
    assert stats.prefix_cache_queries == 0
    assert stats.hit_rate == 0.0


def test_hash_collision_does_not_serve_wrong_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(block_manager_module, "_chain_hash", lambda parent, tokens: 42)
    bm = BlockManager(num_blocks=8, block_size=2)
    allocate_and_compute(bm, [1, 2, 3, 4, 5])
    different = make_seq([3, 4, 1, 2, 5])
    bm.allocate(different)
    assert different.num_cached_tokens == 0
    same = make_seq([1, 2, 3, 4, 5])
    bm.allocate(same)
    # Only the first block could be registered under the (colliding) hash.
    assert same.num_cached_tokens == 2


def test_stats_count_slots_shared_blocks_once_and_hits_in_tokens() -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    prompt = list(range(10))
    allocate_and_compute(bm, prompt)
    stats = bm.stats()
    assert (stats.num_used_blocks, stats.allocated_slots, stats.used_slots) == (3, 12, 10)
    assert stats.waste == pytest.approx(2 / 12)
    second = make_seq(prompt)
    bm.allocate(second)
    stats = bm.stats()
    assert stats.num_blocks == 8
    assert stats.num_used_blocks == 4
    assert stats.num_free_blocks == 4
    assert stats.usage == pytest.approx(0.5)
    assert stats.allocated_slots == 16
    assert stats.used_slots == 8 + 2 + 2  # two shared full blocks once, two partial tails
    assert stats.num_cached_blocks == 2
    assert (stats.prefix_cache_queries, stats.prefix_cache_hits) == (20, 8)
    assert stats.hit_rate == pytest.approx(0.4)


def test_constructor_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError):
        BlockManager(num_blocks=0, block_size=4)
    with pytest.raises(ValueError):
        BlockManager(num_blocks=4, block_size=0)
