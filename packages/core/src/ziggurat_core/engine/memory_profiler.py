"""Measure what the largest step takes on CUDA, for `memory_profile.profile_kv_cache_memory`.

Before the KV cache exists, one dummy step runs `max_num_batched_tokens` tokens (spread over
`max_num_seqs` sequences, as a full prefill batch would be) through the model and the
vocabulary head; torch's allocator records the peak. Where decode steps will run as CUDA
graphs, they are then captured over the same temporary cache and the device's free memory read
before and after: that is what the graphs' memory pool (and whatever else capturing allocates)
takes. The cache then gets what the engine's share of the device leaves.

The readings go through `DeviceMemory`, so the CPU tests run the same sequence with the numbers
injected.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Protocol

import torch
from torch import nn

from .attention.base import AttentionBackend, StepLayout
from .memory_profile import profile_kv_cache_memory, runtime_headroom_bytes
from .reports import MemoryProfile


class DeviceMemory(Protocol):
    """The memory readings the profile takes (torch.cuda's, for one device)."""

    def synchronize(self) -> None: ...
    def reset_peak(self) -> None: ...
    def allocated(self) -> int: ...
    def max_allocated(self) -> int: ...
    def reserved(self) -> int: ...
    def max_reserved(self) -> int: ...
    def free_and_total(self) -> tuple[int, int]: ...
    def empty_cache(self) -> None: ...


class CudaMemory:
    """`DeviceMemory` of one CUDA device."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)

    def allocated(self) -> int:
        return int(torch.cuda.memory_allocated(self.device))

    def max_allocated(self) -> int:
        return int(torch.cuda.max_memory_allocated(self.device))

    def reserved(self) -> int:
        return int(torch.cuda.memory_reserved(self.device))

    def max_reserved(self) -> int:
        return int(torch.cuda.max_memory_reserved(self.device))

    def free_and_total(self) -> tuple[int, int]:
        free, total = torch.cuda.mem_get_info(self.device)
        return int(free), int(total)

    def empty_cache(self) -> None:
        torch.cuda.empty_cache()


# Captures the decode graphs over the given KV caches (their last block the padding block) and
# returns what holds them; the profile drops it once measured.
CaptureGraphsFn = Callable[[list[torch.Tensor]], object]


def measure_graph_memory(
    memory: DeviceMemory, capture: Callable[[], object]
) -> tuple[int, object]:
    """Device memory that `capture()` takes (free before less free after, never below 0), and
    what it returned, still alive: freeing it before the reading would hide the pool.

    The allocator's cache is emptied before each reading: `torch.cuda.graph` empties it when a
    capture begins, so memory cached before the capture would come back during it and hide
    the pool (on the first GPU the profile read 0 for graphs that took 2 MiB). A private graph
    pool stays while its graphs live, so the second emptying leaves it in the reading."""
    memory.synchronize()
    memory.empty_cache()
    free_before, _ = memory.free_and_total()
    captured = capture()
    memory.synchronize()
    memory.empty_cache()
    free_after, _ = memory.free_and_total()
    return max(0, free_before - free_after), captured


def profile_query_lens(max_num_batched_tokens: int, max_num_seqs: int, max_model_len: int) -> list[int]:
    """The prompt lengths of the largest step the scheduler can run: `max_num_batched_tokens`
    tokens over at most `max_num_seqs` sequences of at most `max_model_len` tokens, as even as
    integers allow (the first sequences take the remainder)."""
    if min(max_num_batched_tokens, max_num_seqs, max_model_len) < 1:
        raise ValueError("max_num_batched_tokens, max_num_seqs and max_model_len must be >= 1")
    tokens = min(max_num_batched_tokens, max_num_seqs * max_model_len)
    num_seqs = min(max_num_seqs, tokens)
    base, extra = divmod(tokens, num_seqs)
    return [base + 1] * extra + [base] * (num_seqs - extra)


def run_profile_step(
    model: nn.Module,
    attention: AttentionBackend,
    kv_caches: list[torch.Tensor],
    query_lens: list[int],
    block_size: int,
    device: torch.device,
) -> torch.Tensor:
    """One prefill of `query_lens` prompts (token 0 throughout) from the first blocks of
    `kv_caches`, and the float32 probabilities of each prompt's last position; returns them."""
    tables: list[list[int]] = []
    next_block = 0
    for length in query_lens:
        blocks = math.ceil(length / block_size)
        tables.append(list(range(next_block, next_block + blocks)))
        next_block += blocks
    layout = StepLayout(query_lens, list(query_lens), tables, block_size)
    metadata = attention.prepare(layout, device)
    ids = torch.zeros(sum(query_lens), dtype=torch.long, device=device)
    positions = torch.cat([torch.arange(n, device=device) for n in query_lens])
    hidden = model(ids, positions, kv_caches, attention, metadata)
    last_rows = torch.tensor(query_lens, device=device).cumsum(0) - 1
    logits = model.compute_logits(hidden.index_select(0, last_rows))  # type: ignore[operator]
    return torch.softmax(logits, dim=-1)  # the sampler's largest intermediate


def profile_cuda_memory(
    model: nn.Module,
    attention: AttentionBackend,
    device: torch.device,
    query_lens: list[int],
    block_size: int,
    make_kv_caches: Callable[[int], list[torch.Tensor]],
    *,
    gpu_memory_utilization: float,
    bytes_per_block: int,
    capture_graphs: CaptureGraphsFn | None = None,
    memory: DeviceMemory | None = None,
) -> MemoryProfile:
    """Run the dummy step on `device` against a temporary cache of its blocks (made by
    `make_kv_caches(num_blocks)`, freed afterwards), capture the decode graphs over it where
    `capture_graphs` is given (one block more: the padding block), and size the KV cache from
    the peak and the graphs' memory. `memory`: the readings (None: torch.cuda's of `device`)."""
    memory = CudaMemory(device) if memory is None else memory
    num_blocks = sum(math.ceil(n / block_size) for n in query_lens)
    weights_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    kv_caches = make_kv_caches(num_blocks + int(capture_graphs is not None))
    memory.synchronize()
    memory.reset_peak()
    allocated_before, reserved_before = memory.allocated(), memory.reserved()
    with torch.inference_mode():
        run_profile_step(model, attention, kv_caches, query_lens, block_size, device)
    memory.synchronize()
    # What the device gives up is what the allocator reserves: its rounding and fragmentation
    # make that more than the tensors allocated at the peak, and it stays reserved afterwards.
    peak_activation = max(
        0, memory.max_allocated() - allocated_before, memory.max_reserved() - reserved_before
    )
    graph_bytes = 0
    if capture_graphs is not None:
        graph_bytes, graphs = measure_graph_memory(memory, partial(capture_graphs, kv_caches))
        del graphs  # with it the graphs' pool, before the readings below
    num_cache_tensors = len(kv_caches)
    del kv_caches
    memory.empty_cache()
    free, total = memory.free_and_total()
    non_torch = max(0, (total - free) - memory.reserved())
    return profile_kv_cache_memory(
        total_bytes=total,
        weights_bytes=weights_bytes,
        peak_activation_bytes=peak_activation,
        non_torch_bytes=non_torch,
        gpu_memory_utilization=gpu_memory_utilization,
        bytes_per_block=bytes_per_block,
        cuda_graph_bytes=graph_bytes,
        headroom_bytes=runtime_headroom_bytes(num_cache_tensors),
    )
