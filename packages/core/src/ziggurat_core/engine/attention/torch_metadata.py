"""Per-step index tensors and masks of the torch attention backend, built once in `prepare`
and reused by every layer."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..device import host_to_device
from .base import StepLayout
from .step_indices import context_slots, slots_of


@dataclass
class MaskCache:
    """A boolean "may attend" mask and its additive form per dtype, made on first use
    (prepare does not know the dtype the layers run in)."""

    allowed: torch.Tensor
    additive: dict[torch.dtype, torch.Tensor] = field(default_factory=dict)

    def for_dtype(self, dtype: torch.dtype) -> torch.Tensor:
        mask = self.additive.get(dtype)
        if mask is None:
            mask = torch.zeros(self.allowed.shape, dtype=dtype, device=self.allowed.device)
            mask.masked_fill_(~self.allowed, float("-inf"))
            self.additive[dtype] = mask
        return mask


@dataclass
class DecodeChunk:
    """Decode sequences attended in one call: rows [start, end) of the sorted decode batch."""

    start: int
    end: int
    block_ids: torch.Tensor  # [num_seqs * blocks_per_seq] int64, short tables padded
    blocks_per_seq: int
    mask: MaskCache | None  # [num_seqs, 1, 1, blocks_per_seq * block_size]; None: no padding

    @property
    def num_seqs(self) -> int:
        return self.end - self.start


@dataclass
class DecodeBatch:
    """The decode sequences of a step, longest context first."""

    token_index: torch.Tensor  # [B] int64: flat-batch row of each decode token, in this order
    context_lens: list[int]
    block_tables: list[list[int]]
    block_size: int
    chunk_bytes: int | None  # gathered K+V bytes per chunk; None: one chunk
    device: torch.device
    _chunks: dict[int, list[DecodeChunk]] = field(default_factory=dict)  # by bytes per token
    # A fixed-shape decode (`static_decode_metadata`): its one chunk, for every cache.
    fixed_chunk: DecodeChunk | None = None

    def chunks(self, kv_bytes_per_token: int) -> list[DecodeChunk]:
        """The chunks for a cache with this many K+V bytes per token (built once per step)."""
        if self.fixed_chunk is not None:
            return [self.fixed_chunk]
        chunks = self._chunks.get(kv_bytes_per_token)
        if chunks is None:
            chunks = self._make_chunks(kv_bytes_per_token)
            self._chunks[kv_bytes_per_token] = chunks
        return chunks

    def _make_chunks(self, kv_bytes_per_token: int) -> list[DecodeChunk]:
        bs = self.block_size
        chunks: list[DecodeChunk] = []
        first = 0
        while first < len(self.context_lens):
            blocks_per_seq = -(-self.context_lens[first] // bs)  # the chunk's longest
            if self.chunk_bytes is None:
                end = len(self.context_lens)
            else:
                seq_bytes = blocks_per_seq * bs * kv_bytes_per_token
                end = min(len(self.context_lens), first + max(1, self.chunk_bytes // seq_bytes))
            chunks.append(self._make_chunk(first, end, blocks_per_seq))
            first = end
        return chunks

    def _make_chunk(self, first: int, end: int, blocks_per_seq: int) -> DecodeChunk:
        bs = self.block_size
        lens = self.context_lens[first:end]
        block_ids: list[int] = []
        for ctx_len, table in zip(lens, self.block_tables[first:end], strict=True):
            used = table[: -(-ctx_len // bs)]
            # Pad with the sequence's own first block: finite data, masked out anyway.
            block_ids.extend(used + [used[0]] * (blocks_per_seq - len(used)))
        padded_len = blocks_per_seq * bs
        mask = None
        if min(lens) < padded_len:
            positions = torch.arange(padded_len, device=self.device)
            allowed = positions.unsqueeze(0) < host_to_device(lens, torch.int64, self.device).unsqueeze(1)
            mask = MaskCache(allowed.view(len(lens), 1, 1, padded_len))
        ids = host_to_device(block_ids, torch.int64, self.device)
        return DecodeChunk(first, end, ids, blocks_per_seq, mask)


@dataclass
class PrefillChunk:
    """One sequence computing more than one new token this step."""

    start: int  # first token of the chunk in the flat batch
    end: int  # one past its last token
    prefix_len: int  # tokens cached before this step
    context_slots: torch.Tensor | None  # [context_len] int64; None when prefix_len == 0
    # SDPA path with a prefix only: [q_len, context_len], True where a new token may attend.
    mask: MaskCache | None


@dataclass
class PortableAttentionMetadata:
    layout: StepLayout | None  # None: a fixed-shape decode, whose `_kernel_rows` are given
    block_size: int
    slot_mapping: torch.Tensor  # [num_tokens] int64
    decode: DecodeBatch | None
    prefills: list[PrefillChunk]
    prefill_block_rows: int | None  # query rows per matmul block; None: SDPA
    _kernel_rows: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @property
    def num_tokens(self) -> int:
        return self.slot_mapping.shape[0]

    def kernel_rows(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every new token of the step as one row of the C kernel: (block tables [N, max_blocks]
        int64, context lengths [N] int64, query rows [N] int64). A prefill chunk's token i at
        position p attends to positions 0..p, exactly as if it were decoded there, so prefill
        and decode give the same values whatever the chunking. Built once per step."""
        if self._kernel_rows is None:
            layout = self.layout
            assert layout is not None, "a fixed-shape decode is built with its kernel rows"
            width = max(len(table) for table in layout.block_tables)
            tables = torch.tensor(
                [table + [0] * (width - len(table)) for table in layout.block_tables], dtype=torch.int64
            )
            seq_of_row: list[int] = []
            context: list[int] = []
            for seq, (q_len, ctx_len) in enumerate(zip(layout.query_lens, layout.context_lens, strict=True)):
                seq_of_row.extend([seq] * q_len)
                context.extend(range(ctx_len - q_len + 1, ctx_len + 1))
            device = self.slot_mapping.device
            self._kernel_rows = (
                tables.index_select(0, torch.tensor(seq_of_row, dtype=torch.int64)).to(device),
                torch.tensor(context, dtype=torch.int64, device=device),
                torch.arange(layout.num_tokens, dtype=torch.int64, device=device),
            )
        return self._kernel_rows


def static_decode_metadata(
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    positions: torch.Tensor,
    block_size: int,
    prefill_block_rows: int | None,
) -> PortableAttentionMetadata:
    """A decode step of `B` sequences (one new token each, row i = sequence i) from tensors on
    the device only: no value is read back to the host, so it can be captured in a CUDA graph
    and replayed with new buffer contents. Every sequence gathers its whole block-table row
    (`[B, max_blocks]`, stale or padding ids past its context must still be valid blocks),
    masked past its context length."""
    num_seqs, max_blocks = block_tables.shape
    device = block_tables.device
    seqs = torch.arange(num_seqs, device=device)
    slot_mapping = slots_of(block_tables, seqs, positions, block_size)
    padded_len = max_blocks * block_size
    allowed = torch.arange(padded_len, device=device).unsqueeze(0) < context_lens.unsqueeze(1)
    chunk = DecodeChunk(
        0, num_seqs, block_tables.reshape(-1), max_blocks,
        MaskCache(allowed.view(num_seqs, 1, 1, padded_len)),
    )
    decode = DecodeBatch(seqs, [], [], block_size, None, device, fixed_chunk=chunk)
    return PortableAttentionMetadata(
        None, block_size, slot_mapping, decode, [], prefill_block_rows,
        (block_tables, context_lens, seqs),
    )


def prepare_prefill(
    start: int,
    q_len: int,
    ctx_len: int,
    block_table: torch.Tensor,
    bs: int,
    with_mask: bool,
) -> PrefillChunk:
    """`block_table`: the sequence's blocks on the step's device (int64)."""
    prefix_len = ctx_len - q_len
    if prefix_len == 0:
        return PrefillChunk(start, start + q_len, 0, None, None)
    slots = context_slots(block_table, ctx_len, bs)
    mask = None
    if with_mask:
        # New token i sits at absolute position prefix_len + i and sees keys 0..prefix_len + i.
        device = block_table.device
        query_pos = torch.arange(prefix_len, ctx_len, device=device).unsqueeze(1)
        key_pos = torch.arange(ctx_len, device=device).unsqueeze(0)
        mask = MaskCache(key_pos <= query_pos)
    return PrefillChunk(start, start + q_len, prefix_len, slots, mask)
