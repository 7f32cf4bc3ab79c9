"""Paged KV-cache bookkeeping: fixed-size blocks, per-sequence block tables, reference counts and
automatic prefix caching. No torch: this only decides which physical block holds which token.

Prefix caching: once a block is full and its KV computed, it is registered under a chained hash
of (parent block hash, its token ids), so a later sequence whose prompt starts with the same
tokens reuses the block instead of recomputing it. A freed registered block keeps its content
and stays findable until the block is needed for something else (least recently freed first).
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from dataclasses import dataclass

from .sequence import SequenceState


class BlockAccountingError(RuntimeError):
    """The block manager was asked to do something that would corrupt its accounting
    (double free, allocating past the free blocks, appending to an unallocated sequence)."""


@dataclass(frozen=True)
class BlockManagerStats:
    num_blocks: int
    block_size: int
    num_free_blocks: int  # ref count 0, including cached blocks that may still be hit
    num_used_blocks: int  # ref count > 0
    num_cached_blocks: int  # blocks registered in the prefix cache (in use or free)
    prefix_cache_queries: int  # tokens of allocated sequences looked up in the prefix cache
    prefix_cache_hits: int  # of those, tokens served from the cache (not recomputed)
    allocated_slots: int  # num_used_blocks * block_size
    used_slots: int  # slots of used blocks at a position < len(seq) of a live sequence; shared blocks once

    @property
    def usage(self) -> float:
        return self.num_used_blocks / self.num_blocks

    @property
    def hit_rate(self) -> float:
        return self.prefix_cache_hits / self.prefix_cache_queries if self.prefix_cache_queries else 0.0

    @property
    def waste(self) -> float:
        """Fraction of allocated slots that hold no token (partly filled last blocks)."""
        return 1.0 - self.used_slots / self.allocated_slots if self.allocated_slots else 0.0


@dataclass(frozen=True)
class _CacheEntry:
    block_id: int
    block_hash: int
    parent_hash: int | None
    token_ids: tuple[int, ...]  # kept to reject a hash collision instead of serving wrong KV


def _chain_hash(parent_hash: int | None, token_ids: tuple[int, ...]) -> int:
    return hash((parent_hash, token_ids))


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._ref_counts = [0] * num_blocks
        self._num_refs = 0  # sum of ref counts = block-table entries over live sequences
        # Free blocks live in one of two queues: never-registered ones are handed out first so
        # that cached content survives as long as possible; cached ones leave oldest-freed first.
        self._free_uncached: deque[int] = deque(range(num_blocks))
        self._free_cached: OrderedDict[int, None] = OrderedDict()
        self._cache: dict[int, _CacheEntry] = {}  # chain hash -> registered block
        self._block_hash: list[int | None] = [None] * num_blocks
        # Chain hashes of each live sequence's leading full computed blocks (in table order).
        self._seq_hashes: dict[int, list[int]] = {}
        self._live: dict[int, SequenceState] = {}
        self._prefix_queries = 0
        self._prefix_hits = 0

    # ----- read-only queries -----

    @property
    def num_free_blocks(self) -> int:
        return len(self._free_uncached) + len(self._free_cached)

    def ref_count(self, block_id: int) -> int:
        return self._ref_counts[block_id]

    def free_block_ids(self) -> list[int]:
        """Ids of all blocks with ref count 0 (diagnostics and tests)."""
        return [*self._free_uncached, *self._free_cached]

    def blocks_for_tokens(self, num_tokens: int) -> int:
        return _ceil_div(num_tokens, self.block_size)

    def cached_prefix_len(self, seq: SequenceState) -> int:
        """Tokens `allocate(seq)` would take from the prefix cache right now."""
        return len(self._match_prefix(seq.token_ids)) * self.block_size

    # ----- allocation -----

    def can_allocate(self, seq: SequenceState) -> bool:
        self._check_allocatable(seq)
        hits = self._match_prefix(seq.token_ids)
        return self._free_blocks_consumed_by_allocate(seq, hits) <= self.num_free_blocks

    def allocate(self, seq: SequenceState) -> None:
        """Give `seq` blocks for all of its tokens, reusing cached blocks for the longest
        matching prefix; sets `num_computed_tokens` and `num_cached_tokens` to the hit length."""
        self._check_allocatable(seq)
        hits = self._match_prefix(seq.token_ids)
        consumed = self._free_blocks_consumed_by_allocate(seq, hits)
        if consumed > self.num_free_blocks:
            raise BlockAccountingError(
                f"cannot allocate {consumed} blocks for sequence {seq.seq_id}: "
                f"{self.num_free_blocks} free (call can_allocate first)"
            )
        table: list[int] = []
        for entry in hits:
            block = entry.block_id
            if self._ref_counts[block] == 0:
                del self._free_cached[block]  # a hit revives the block before anything evicts it
            self._ref_counts[block] += 1
            self._num_refs += 1
            table.append(block)
        num_fresh = self.blocks_for_tokens(len(seq)) - len(hits)
        table.extend(self._take_free_block() for _ in range(num_fresh))
        seq.block_table = table
        seq.num_computed_tokens = seq.num_cached_tokens = len(hits) * self.block_size
        self._seq_hashes[seq.seq_id] = [entry.block_hash for entry in hits]
        self._live[seq.seq_id] = seq
        if self.enable_prefix_caching:
            self._prefix_queries += len(seq)
            self._prefix_hits += seq.num_cached_tokens

    def can_append(self, seq: SequenceState, num_new_tokens: int) -> bool:
        return self._num_new_blocks_for_append(seq, num_new_tokens) <= self.num_free_blocks

    def append(self, seq: SequenceState, num_new_tokens: int) -> None:
        """Make sure blocks exist for positions up to `num_computed_tokens + num_new_tokens`."""
        num_new = self._num_new_blocks_for_append(seq, num_new_tokens)
        if num_new > self.num_free_blocks:
            raise BlockAccountingError(
                f"cannot append {num_new} blocks to sequence {seq.seq_id}: "
                f"{self.num_free_blocks} free (call can_append first)"
            )
        if num_new:
            seq.block_table.extend(self._take_free_block() for _ in range(num_new))

    def mark_computed(self, seq: SequenceState) -> None:
        """Register every block of `seq` that is now full and computed in the prefix cache."""
        if not self.enable_prefix_caching:
            return
        hashes = self._seq_hashes.get(seq.seq_id)
        if hashes is None:
            raise BlockAccountingError(f"sequence {seq.seq_id} has no blocks")
        bs = self.block_size
        num_full = min(seq.num_computed_tokens, len(seq.token_ids)) // bs
        num_full = min(num_full, len(seq.block_table))
        parent = hashes[-1] if hashes else None
        for index in range(len(hashes), num_full):
            token_ids = tuple(seq.token_ids[index * bs : (index + 1) * bs])
            block_hash = _chain_hash(parent, token_ids)
            hashes.append(block_hash)
            block = seq.block_table[index]
            # When two sequences computed the same block side by side, the first one registered
            # stays the cached copy; the other block is simply freed uncached later.
            if block_hash not in self._cache and self._block_hash[block] is None:
                self._cache[block_hash] = _CacheEntry(block, block_hash, parent, token_ids)
                self._block_hash[block] = block_hash
            parent = block_hash

    def free(self, seq: SequenceState) -> None:
        """Drop `seq`'s references (tail first, so the tail is evicted first) and clear its table.
        Freeing a sequence that holds no blocks does nothing."""
        # Validate first so that a double free raises before any count has moved.
        for block, times in Counter(seq.block_table).items():
            if self._ref_counts[block] < times:
                raise BlockAccountingError(f"double free of block {block} (sequence {seq.seq_id})")
        for block in reversed(seq.block_table):
            count = self._ref_counts[block]
            self._ref_counts[block] = count - 1
            self._num_refs -= 1
            if count == 1:
                if self._block_hash[block] is None:
                    self._free_uncached.append(block)
                else:
                    self._free_cached[block] = None  # most recently freed: evicted last
        seq.block_table = []
        self._seq_hashes.pop(seq.seq_id, None)
        self._live.pop(seq.seq_id, None)

    def stats(self) -> BlockManagerStats:
        num_used = self.num_blocks - self.num_free_blocks
        return BlockManagerStats(
            num_blocks=self.num_blocks,
            block_size=self.block_size,
            num_free_blocks=self.num_free_blocks,
            num_used_blocks=num_used,
            num_cached_blocks=len(self._cache),
            prefix_cache_queries=self._prefix_queries,
            prefix_cache_hits=self._prefix_hits,
            allocated_slots=num_used * self.block_size,
            used_slots=self._count_used_slots(),
        )

    # ----- internals -----

    def _check_allocatable(self, seq: SequenceState) -> None:
        if seq.block_table or seq.seq_id in self._live:
            raise BlockAccountingError(f"sequence {seq.seq_id} already has blocks")
        if not seq.token_ids:
            raise ValueError(f"sequence {seq.seq_id} has no tokens to allocate blocks for")

    def _match_prefix(self, token_ids: list[int]) -> list[_CacheEntry]:
        """Cached blocks for the longest prefix of full blocks. The last token is never a hit,
        since computing it is what produces the logits for the next token."""
        if not self.enable_prefix_caching:
            return []
        bs = self.block_size
        hits: list[_CacheEntry] = []
        parent: int | None = None
        for index in range((len(token_ids) - 1) // bs):
            block_tokens = tuple(token_ids[index * bs : (index + 1) * bs])
            block_hash = _chain_hash(parent, block_tokens)
            entry = self._cache.get(block_hash)
            if entry is None or entry.parent_hash != parent or entry.token_ids != block_tokens:
                break
            hits.append(entry)
            parent = block_hash
        return hits

    def _free_blocks_consumed_by_allocate(self, seq: SequenceState, hits: list[_CacheEntry]) -> int:
        """Free blocks `allocate` consumes: fresh blocks for the misses, plus the hits that
        currently sit in the free pool (they cost no compute, but they leave the pool too)."""
        revived = sum(1 for entry in hits if self._ref_counts[entry.block_id] == 0)
        return self.blocks_for_tokens(len(seq)) - len(hits) + revived

    def _num_new_blocks_for_append(self, seq: SequenceState, num_new_tokens: int) -> int:
        if num_new_tokens < 0:
            raise ValueError(f"num_new_tokens must be >= 0, got {num_new_tokens}")
        if seq.seq_id not in self._live:
            raise BlockAccountingError(f"sequence {seq.seq_id} has no blocks; allocate it first")
        needed = self.blocks_for_tokens(seq.num_computed_tokens + num_new_tokens)
        return max(0, needed - len(seq.block_table))

    def _take_free_block(self) -> int:
        if self._free_uncached:
            block = self._free_uncached.popleft()
        else:
            block, _ = self._free_cached.popitem(last=False)
            evicted_hash = self._block_hash[block]
            if evicted_hash is not None:
                del self._cache[evicted_hash]
                self._block_hash[block] = None
        self._ref_counts[block] = 1
        self._num_refs += 1
        return block

    def _count_used_slots(self) -> int:
        # O(live sequences), since the engine reads stats every step. A block is shared only
        # through a prefix hit, and hits are full blocks inside every sharer's tokens, so each
        # extra reference to a block adds exactly one full block to the per-sequence sum.
        per_seq = sum(min(len(seq), len(seq.block_table) * self.block_size) for seq in self._live.values())
        num_used = self.num_blocks - self.num_free_blocks
        return per_seq - (self._num_refs - num_used) * self.block_size
