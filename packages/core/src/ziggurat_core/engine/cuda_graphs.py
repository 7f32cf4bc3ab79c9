"""Decode steps over static buffers, replayed as CUDA graphs.

A decode step (every sequence one new token, every row sampled) of `n` sequences runs at the
smallest captured batch size that holds it (`cuda_graph_sizes.py`). Its inputs are copied into
buffers that never move; the rows past `n` are padding: token 0 at position 0 of a sequence
whose every block is the padding block, a KV-cache block no sequence is given, so what padding
writes and reads touches nobody's cache. The attention metadata is built inside the step from
the buffers by tensor ops alone (`AttentionBackend.prepare_decode`), so a graph captured once
per size replays every later step of that size. Prefill and mixed steps, and decode batches
larger than every captured size, run eagerly.

Capture needs CUDA. Elsewhere (`capture=False`) the same buffers, padding and step function
run eagerly, which is how the CPU tests check that padding changes no sampled token.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from .cuda_graph_sizes import padded_batch_size
from .device import host_to_device

logger = logging.getLogger("ziggurat.engine")

# The forward pass of a decode step at batch size `size` over the buffers' first `size` rows:
# logits [size, vocab].
DecodeStepFn = Callable[["DecodeBuffers", int], torch.Tensor]


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
    ) -> None:
        """Rows [0, n) from the step, rows [n, size) padding. Each row's table is written up
        to the longest context's blocks; columns past a row's own blocks keep earlier valid
        ids (or padding), never read unmasked."""
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


class DecodeGraphRunner:
    """Runs decode steps at the captured sizes (ascending `sizes`), as CUDA graphs where
    `capture` (CUDA only), else eagerly over the same buffers. Captured at construction,
    largest size first, all graphs sharing one memory pool."""

    def __init__(
        self,
        step: DecodeStepFn,
        sizes: list[int],
        max_blocks: int,
        block_size: int,
        pad_block: int,
        device: torch.device,
        capture: bool,
    ) -> None:
        if not sizes:
            raise ValueError("DecodeGraphRunner needs at least one batch size")
        if capture and device.type != "cuda":
            raise ValueError(f"CUDA graphs are captured on CUDA only, the device is {device}")
        self.step = step
        self.sizes = sizes
        self.buffers = DecodeBuffers(sizes[-1], max_blocks, block_size, pad_block, device)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        if capture:
            self._capture_all()

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
        size = self.padded_size(len(input_ids))
        if size is None:
            return None
        self.buffers.fill(size, input_ids, positions, block_tables)
        graph = self.graphs.get(size)
        if graph is None:
            logits = self.step(self.buffers, size)
        else:
            graph[0].replay()
            logits = graph[1]
        return logits[: len(input_ids)]

    def _capture_all(self) -> None:
        pool = torch.cuda.graph_pool_handle()
        # One side stream for every warm-up: each new stream gets cuBLAS workspaces of its own,
        # which stay allocated for the process's life.
        side = torch.cuda.Stream()
        for size in reversed(self.sizes):  # the largest first: later ones fit in its pool
            # One eager run first, on a side stream as torch asks, so lazy initialisation
            # (workspaces, kernel choice) is not captured. The buffers hold padding only:
            # it writes into the padding block.
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.step(self.buffers, size)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                logits = self.step(self.buffers, size)
            self.graphs[size] = (graph, logits)
        torch.cuda.synchronize()
