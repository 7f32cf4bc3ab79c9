"""Decode steps over static buffers, replayed as CUDA graphs.

A decode step (every sequence one new token, every row sampled) of `n` sequences runs at the
smallest captured batch size that holds it, over the smallest block-table width bucket that
holds its longest context (`cuda_graph_sizes.py`). Its inputs are copied into buffers that
never move; the rows past `n` are padding: token 0 at position 0 of a sequence whose every
block is the padding block, a KV-cache block no sequence is given, so what padding writes and
reads touches nobody's cache. The attention metadata is built inside the step from the buffers
by tensor ops alone (`AttentionBackend.prepare_decode`), so a graph captured once per (size,
width) replays every later step of that shape. Prefill and mixed steps, and decode batches
larger than every captured size, run eagerly.

Every size is captured at start-up at the full width (the memory profile measures those, and
they set the shared pool's size); a narrower width is captured the first time a step needs it,
into the same pool. Every graph writes its logits into one shared output buffer, so the graphs
hold no output of their own.

Capture needs CUDA. Elsewhere (`capture=False`) the same buffers, padding and step function
run eagerly, which is how the CPU tests check that padding changes no sampled token.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from .cuda_graph_sizes import context_width_buckets, padded_batch_size, padded_width
from .device import host_to_device

logger = logging.getLogger("ziggurat.engine")

# The forward pass of a decode step at batch size `size` over the buffers' first `size` rows and
# the first `width` columns of their block tables: logits [size, vocab].
DecodeStepFn = Callable[["DecodeBuffers", int, int], torch.Tensor]


def decode_graphs_wanted(device: torch.device, enforce_eager: bool, tensor_parallel_size: int) -> bool:
    """CUDA graphs for decode steps: on CUDA unless `enforce_eager` turns them off, in one
    process (a step under tensor parallelism all-reduces between ranks; those collectives are
    not captured)."""
    return device.type == "cuda" and not enforce_eager and tensor_parallel_size == 1


class DecodeBuffers:
    """The inputs of a decode step at the largest captured size; a step uses the first rows."""

    def __init__(
        self, max_batch: int, max_blocks: int, block_size: int, pad_block: int, device: torch.device
    ) -> None:
        self.block_size = block_size
        self.pad_block = pad_block
        self.input_ids = torch.zeros(max_batch, dtype=torch.int64, device=device)
        self.positions = torch.zeros(max_batch, dtype=torch.int64, device=device)
        self.context_lens = torch.ones(max_batch, dtype=torch.int64, device=device)
        self.block_tables = torch.full(
            (max_batch, max_blocks), pad_block, dtype=torch.int64, device=device
        )

    @property
    def max_blocks(self) -> int:
        return self.block_tables.shape[1]

    def fill(
        self,
        size: int,
        input_ids: list[int],
        positions: list[int],
        block_tables: list[list[int]],
    ) -> int:
        """Rows [0, n) from the step, rows [n, size) padding. Each row's table is written up
        to the longest context's blocks; columns past a row's own blocks keep earlier valid
        ids (or padding), never read unmasked. Returns the blocks the longest context needs."""
        n = len(input_ids)
        device = self.input_ids.device
        used = [-(-(p + 1) // self.block_size) for p in positions]
        width = max(used)
        if width > self.max_blocks:
            raise ValueError(
                f"a context of {max(positions) + 1} tokens needs {width} blocks, the decode "
                f"buffers hold {self.max_blocks}"
            )
        tables = [table[:count] + [self.pad_block] * (width - count)
                  for table, count in zip(block_tables, used, strict=True)]
        self.input_ids[:n].copy_(host_to_device(input_ids, torch.int64, device))
        self.positions[:n].copy_(host_to_device(positions, torch.int64, device))
        self.context_lens[:n].copy_(self.positions[:n] + 1)
        self.block_tables[:n, :width].copy_(host_to_device(tables, torch.int64, device))
        self.input_ids[n:size].zero_()
        self.positions[n:size].zero_()
        self.context_lens[n:size].fill_(1)
        self.block_tables[n:size].fill_(self.pad_block)
        return width


class DecodeGraphRunner:
    """Runs decode steps at the captured sizes (ascending `sizes`) and width buckets (from
    `min_width` blocks up to `max_blocks`), as CUDA graphs where `capture` (CUDA only), else
    eagerly over the same buffers. All graphs share one memory pool and one output buffer."""

    def __init__(
        self,
        step: DecodeStepFn,
        sizes: list[int],
        max_blocks: int,
        block_size: int,
        pad_block: int,
        device: torch.device,
        capture: bool,
        min_width: int = 1,
    ) -> None:
        if not sizes:
            raise ValueError("DecodeGraphRunner needs at least one batch size")
        if capture and device.type != "cuda":
            raise ValueError(f"CUDA graphs are captured on CUDA only, the device is {device}")
        self.step = step
        self.sizes = sizes
        self.widths = context_width_buckets(max_blocks, min_width)
        self.buffers = DecodeBuffers(sizes[-1], max_blocks, block_size, pad_block, device)
        self.capture = capture
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self.logits: torch.Tensor | None = None  # [max size, vocab], every graph's output
        if capture:
            self._pool = torch.cuda.graph_pool_handle()
            # One side stream for every warm-up: each new stream gets cuBLAS workspaces of its
            # own, which stay allocated for the process's life.
            self._side = torch.cuda.Stream()
            for size in reversed(self.sizes):  # the largest first: later ones fit in its pool
                self._capture(size, self.widths[-1])
            torch.cuda.synchronize()

    @property
    def captured(self) -> bool:
        return bool(self.graphs)

    def padded_size(self, num_seqs: int) -> int | None:
        """The batch size a decode step of `num_seqs` runs at; None: it runs eagerly."""
        return padded_batch_size(num_seqs, self.sizes)

    def run(
        self, input_ids: list[int], positions: list[int], block_tables: list[list[int]]
    ) -> torch.Tensor | None:
        """Logits [n, vocab] of a decode step of n sequences (row i: sequence i); None where n
        is larger than every size (the caller runs the step eagerly)."""
        n = len(input_ids)
        size = self.padded_size(n)
        if size is None:
            return None
        width = padded_width(self.buffers.fill(size, input_ids, positions, block_tables), self.widths)
        if not self.capture:
            return self.step(self.buffers, size, width)[:n]
        graph = self.graphs.get((size, width))
        if graph is None:
            # First step of this shape: captured now over the step's own inputs (the warm-up
            # runs the step, and the replay writes the same keys and values again).
            graph = self._capture(size, width)
        graph.replay()
        assert self.logits is not None
        return self.logits[:n]

    def _capture(self, size: int, width: int) -> torch.cuda.CUDAGraph:
        # One eager run first, on the side stream as torch asks, so lazy initialisation
        # (workspaces, kernel choice) is not captured. At start-up the buffers hold padding
        # only: it writes into the padding block.
        self._side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self._side):
            warm = self.step(self.buffers, size, width)
        torch.cuda.current_stream().wait_stream(self._side)
        if self.logits is None:
            self.logits = torch.empty(
                (self.sizes[-1], warm.shape[1]), dtype=warm.dtype, device=warm.device
            )
        del warm
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            self.logits[:size].copy_(self.step(self.buffers, size, width))
        self.graphs[(size, width)] = graph
        return graph
