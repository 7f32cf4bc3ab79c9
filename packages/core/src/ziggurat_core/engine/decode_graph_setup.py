"""How a model runner gets its decode graphs: the step they capture, the graph runner over a KV
cache (captured on CUDA, eager over the same buffers elsewhere), and what the capture over the
real cache took, against what the memory profile set aside (`memory_profiler.py`)."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

import torch
from torch import nn

from .attention.base import AttentionBackend
from .cuda_graph_sizes import MIN_GRAPH_CONTEXT_TOKENS, graph_capture_sizes
from .cuda_graphs import DecodeBuffers, DecodeGraphRunner, DecodeStepFn
from .memory_profile import graph_overrun_bytes
from .memory_profiler import CudaMemory, measure_graph_memory
from .reports import MemoryProfile

logger = logging.getLogger("ziggurat.engine")


def decode_step_over(
    model: nn.Module, attention: AttentionBackend, block_size: int, kv_caches: list[torch.Tensor]
) -> DecodeStepFn:
    """The decode step over `kv_caches` that the graphs capture."""

    def decode_on_buffers(buffers: DecodeBuffers, size: int, width: int) -> torch.Tensor:
        """Logits of a decode step over the first `size` rows and `width` block-table columns
        of the static buffers (what a CUDA graph captures: tensor ops only, nothing read back
        to the host)."""
        positions = buffers.positions[:size]
        metadata = attention.prepare_decode(
            # A narrower width is a strided view; the CPU kernel reads packed rows.
            buffers.block_tables[:size, :width].contiguous(), buffers.context_lens[:size],
            positions, block_size,
        )
        hidden = model(buffers.input_ids[:size], positions, kv_caches, attention, metadata)
        return model.compute_logits(hidden)  # type: ignore[operator,no-any-return]

    return decode_on_buffers


@torch.inference_mode()
def make_decode_graphs(
    step: DecodeStepFn,
    max_num_seqs: int,
    max_model_len: int,
    block_size: int,
    pad_block: int,
    device: torch.device,
    quiet: bool = False,
) -> DecodeGraphRunner | None:
    """The graph runner for `step`, padding with `pad_block` (the cache's last block); None
    (every step eager, with a warning) where capture fails: the graph path must never be the
    reason an engine does not start. `quiet`: no log (the profiling capture)."""
    sizes = graph_capture_sizes(max_num_seqs)
    capture = device.type == "cuda"
    started = time.perf_counter()
    try:
        graphs = DecodeGraphRunner(
            step, sizes, -(-max_model_len // block_size), block_size, pad_block=pad_block,
            device=device, capture=capture, min_width=-(-MIN_GRAPH_CONTEXT_TOKENS // block_size),
        )
    except RuntimeError as exc:
        if not capture:
            raise
        logger.warning(
            "capturing decode steps as CUDA graphs failed (%s: %s); every step runs "
            "eagerly (enforce_eager skips the attempt)", type(exc).__name__, exc,
        )
        torch.cuda.synchronize(device)
        return None
    if not quiet:
        logger.info(
            "decode steps %s at batch sizes %s (%.2fs), over block-table widths %s (the "
            "narrower ones captured at first use); larger batches and prefills run eagerly%s",
            "captured as CUDA graphs" if capture else "padded over static buffers, eagerly",
            ",".join(map(str, sizes)), time.perf_counter() - started,
            ",".join(map(str, graphs.widths)),
            "; enforce_eager turns the graphs off" if capture else "",
        )
    return graphs


def capture_measured(
    make: Callable[[], DecodeGraphRunner | None], profile: MemoryProfile, device: torch.device
) -> tuple[DecodeGraphRunner | None, MemoryProfile]:
    """`make()` on CUDA with the memory it took recorded in the profile
    (`cuda_graph_measured_bytes`), and a warning where that is more than was set aside."""
    graph_bytes, graphs = measure_graph_memory(CudaMemory(device), make)
    profile = dataclasses.replace(profile, cuda_graph_measured_bytes=graph_bytes)
    gib = 2**30
    logger.info(
        "decode CUDA graphs took %.3f GiB over the KV cache (%.3f GiB was set aside for "
        "them by the memory profile)", graph_bytes / gib, profile.cuda_graph_bytes / gib,
    )
    overrun = graph_overrun_bytes(profile)
    if overrun:
        logger.warning(
            "the decode CUDA graphs took %.3f GiB more than the memory profile set aside: "
            "the engine uses that much beyond gpu_memory_utilization (lower it, or "
            "enforce_eager for no graphs)", overrun / gib,
        )
    assert graphs is None or isinstance(graphs, DecodeGraphRunner)
    return graphs, profile
