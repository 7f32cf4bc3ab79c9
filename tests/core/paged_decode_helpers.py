"""Shared by the C paged-decode attention kernel's tests (test_cpu_decode_kernel.py,
test_cpu_decode_kernel_loading.py): paged steps with random caches, the dense float64
reference, the kernel's decode inputs, a counting wrapper, and one forward through the backend."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from ziggurat_core.engine.attention.base import StepLayout
from ziggurat_core.engine.attention.torch_backend import PortableAttentionBackend, reference_mask
from ziggurat_core.engine.cpu_kernels import (
    PagedAttentionKernel,
    load_paged_attention_kernel,
)

CPU = torch.device("cpu")
SENTINEL = -7777.0
# Cache slots outside every context hold values this large: a kernel that reads one of them
# (an off-by-one, a wrong block) is far off the reference, not just slightly.
NOISE_SCALE = 8.0
TOL = 1e-5
CACHE_DTYPES = [torch.float32, torch.float16]


# ---- building steps and the reference ----


@dataclass
class PagedStep:
    layout: StepLayout
    kv_cache: torch.Tensor  # [2, num_blocks, bs, kvh, d]; cached prefixes written, noise elsewhere
    keys: list[torch.Tensor]  # per sequence, its whole context [context_len, kvh, d]
    values: list[torch.Tensor]
    query: torch.Tensor  # [num_tokens, H, d]
    new_keys: torch.Tensor  # [num_tokens, kvh, d], the new tokens' keys in batch order
    new_values: torch.Tensor

    @property
    def decode_seqs(self) -> list[int]:
        return [i for i, q_len in enumerate(self.layout.query_lens) if q_len == 1]

    @property
    def decode_rows(self) -> list[int]:
        starts = [sum(self.layout.query_lens[:i]) for i in range(len(self.layout.query_lens))]
        return [starts[i] for i in self.decode_seqs]


def make_step(
    seqs: list[tuple[int, int]],  # (cached prefix length, new tokens) per sequence
    *,
    block_size: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype = torch.float32,
    cache_dtype: torch.dtype | None = None,
    spare_blocks: int = 9,
    seed: int = 0,
) -> PagedStep:
    """A step whose sequences own blocks scattered at random over a larger cache.

    Query and new keys/values are in `dtype`; the cache in `cache_dtype` (default `dtype`). The
    reference's `keys`/`values` are the values as the cache stores them (rounded to
    `cache_dtype`, back in `dtype`); `new_keys`/`new_values` keep their full precision, since a
    backend rounds them as it stores them.
    """
    cache_dtype = cache_dtype or dtype
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    needed = [-(-(prefix + new) // block_size) for prefix, new in seqs]
    num_blocks = sum(needed) + spare_blocks
    free = list(range(num_blocks))
    rng.shuffle(free)
    tables = []
    for count in needed:
        tables.append(free[:count])
        free = free[count:]

    shape = (2, num_blocks, block_size, num_kv_heads, head_dim)
    kv_cache = torch.randn(shape, generator=gen) * NOISE_SCALE
    keys, values, queries, new_keys, new_values = [], [], [], [], []
    for (prefix, new), table in zip(seqs, tables, strict=True):
        k = torch.randn(prefix + new, num_kv_heads, head_dim, generator=gen)
        v = torch.randn(prefix + new, num_kv_heads, head_dim, generator=gen)
        for pos in range(prefix):
            kv_cache[0, table[pos // block_size], pos % block_size] = k[pos]
            kv_cache[1, table[pos // block_size], pos % block_size] = v[pos]
        keys.append(k.to(cache_dtype).to(dtype))
        values.append(v.to(cache_dtype).to(dtype))
        new_keys.append(k[prefix:].to(dtype))
        new_values.append(v[prefix:].to(dtype))
        queries.append(torch.randn(new, num_heads, head_dim, generator=gen).to(dtype))
    layout = StepLayout(
        query_lens=[new for _, new in seqs],
        context_lens=[prefix + new for prefix, new in seqs],
        block_tables=tables,
        block_size=block_size,
    )
    return PagedStep(
        layout,
        kv_cache.to(cache_dtype),
        keys,
        values,
        torch.cat(queries),
        torch.cat(new_keys),
        torch.cat(new_values),
    )


def write_new_tokens(step: PagedStep) -> None:
    """Store the step's new keys/values in the cache, as a backend's forward does first."""
    bs = step.layout.block_size
    row = 0
    for q_len, ctx, table in zip(
        step.layout.query_lens, step.layout.context_lens, step.layout.block_tables, strict=True
    ):
        for pos in range(ctx - q_len, ctx):
            step.kv_cache[0, table[pos // bs], pos % bs] = step.new_keys[row]
            step.kv_cache[1, table[pos // bs], pos % bs] = step.new_values[row]
            row += 1


def dense_reference(step: PagedStep, scale: float) -> torch.Tensor:
    """float64 [num_tokens, H, d]: every token against all keys of the step under reference_mask."""
    num_heads = step.query.shape[1]
    group = num_heads // step.new_keys.shape[1]
    keys = torch.cat(step.keys).double().repeat_interleave(group, dim=1)  # [sum ctx, H, d]
    values = torch.cat(step.values).double().repeat_interleave(group, dim=1)
    scores = torch.einsum("thd,shd->hts", step.query.double(), keys) * scale
    probs = torch.softmax(scores + reference_mask(step.layout).double(), dim=-1)
    return torch.einsum("hts,shd->thd", probs, values)


def decode_inputs(step: PagedStep) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(block tables padded with 0, context lengths, token rows) of the step's decodes."""
    seqs = step.decode_seqs
    tables = [step.layout.block_tables[i] for i in seqs]
    width = max(len(t) for t in tables)
    padded = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int64)
    lens = torch.tensor([step.layout.context_lens[i] for i in seqs], dtype=torch.int64)
    return padded, lens, torch.tensor(step.decode_rows, dtype=torch.int64)


class CountingKernel:
    """Wraps the real kernel and counts the decode rows it was asked for."""

    def __init__(self, inner: PagedAttentionKernel) -> None:
        self.inner = inner
        self.calls = 0
        self.rows = 0
        self.writes = 0

    @property
    def cache_dtypes(self) -> tuple[torch.dtype, ...]:
        return self.inner.cache_dtypes

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        self.calls += 1
        self.rows += int(args[4].numel())  # token_rows
        self.inner(*args, **kwargs)

    def write_kv(self, *args: Any, **kwargs: Any) -> None:
        self.writes += 1
        self.inner.write_kv(*args, **kwargs)


def loaded_kernel() -> PagedAttentionKernel:
    loaded = load_paged_attention_kernel()
    assert loaded is not None, "a C compiler is present but the kernel did not build"
    return loaded


def skip_without_half(kernel: PagedAttentionKernel, cache_dtype: torch.dtype) -> None:
    if cache_dtype == torch.float16 and not kernel.supports_float16:
        pytest.skip("this compiler/CPU builds the kernel without float16 support")


def mixed_seqs(block_size: int) -> list[tuple[int, int]]:
    """Decodes of context 700, 1, one block, two blocks and just over, between two prefills."""
    bs = block_size
    return [
        (699, 1),
        (0, 7),  # prefill from scratch
        (0, 1),  # context 1
        (bs - 1, 1),  # context exactly one block
        (bs + 3, 4),  # prefill after a cached prefix
        (2 * bs, 1),  # context one past a block boundary
        (2 * bs - 1, 1),  # context exactly two blocks
    ]


def run_backend(
    step: PagedStep, scale: float, decode_kernel: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, cache after the step) of one forward on a copy of the step's cache."""
    backend = PortableAttentionBackend(decode_kernel=decode_kernel)
    cache = step.kv_cache.clone()
    metadata = backend.prepare(step.layout, CPU)
    out = backend.forward(step.query, step.new_keys, step.new_values, cache, metadata, scale)
    return out, cache
