"""Measure what the largest step takes on CUDA, for `memory_profile.profile_kv_cache_memory`.

Before the KV cache exists, one dummy step runs `max_num_batched_tokens` tokens (spread over
`max_num_seqs` sequences, as a full prefill batch would be) through the model and the
vocabulary head; torch's allocator records the peak. The cache then gets what the engine's
share of the device leaves.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .attention.base import AttentionBackend, StepLayout
from .memory_profile import profile_kv_cache_memory
from .reports import MemoryProfile


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
) -> MemoryProfile:
    """Run the dummy step on `device` against a temporary cache of its blocks (made by
    `make_kv_caches(num_blocks)`, freed afterwards) and size the KV cache from the peak."""
    num_blocks = sum(math.ceil(n / block_size) for n in query_lens)
    weights_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    kv_caches = make_kv_caches(num_blocks)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    with torch.inference_mode():
        run_profile_step(model, attention, kv_caches, query_lens, block_size, device)
    torch.cuda.synchronize(device)
    peak_activation = torch.cuda.max_memory_allocated(device) - before
    del kv_caches
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(device)
    non_torch = max(0, (total - free) - torch.cuda.memory_reserved(device))
    return profile_kv_cache_memory(
        total_bytes=int(total),
        weights_bytes=weights_bytes,
        peak_activation_bytes=int(peak_activation),
        non_torch_bytes=int(non_torch),
        gpu_memory_utilization=gpu_memory_utilization,
        bytes_per_block=bytes_per_block,
    )
