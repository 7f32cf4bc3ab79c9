"""PortableAttentionBackend against a naive dense reference computed from contiguous K/V."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import pytest
import torch
from ziggurat_core.engine.attention.base import AttentionLayoutError, StepLayout
from ziggurat_core.engine.attention.torch_backend import PortableAttentionBackend, reference_mask

CPU = torch.device("cpu")


@dataclass
class Scenario:
    layout: StepLayout
    kv_cache: torch.Tensor  # prefixes already written, every other slot holds noise
    full_keys: list[torch.Tensor]  # per sequence [context_len, kvh, d]
    full_values: list[torch.Tensor]
    query: torch.Tensor  # [num_tokens, H, d]
    key: torch.Tensor  # [num_tokens, kvh, d]: the new tokens' keys, in batch order
    value: torch.Tensor


def make_scenario(
    seqs: list[tuple[int, int]],  # (cached prefix length, new tokens) per sequence
    *,
    block_size: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int = 8,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
) -> Scenario:
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    blocks_needed = [-(-(p + n) // block_size) for p, n in seqs]
    num_blocks = sum(blocks_needed) + 3  # spare blocks stay untouched
    block_ids = list(range(num_blocks))
    rng.shuffle(block_ids)  # non-contiguous, out-of-order physical blocks
    tables: list[list[int]] = []
    for count in blocks_needed:
        tables.append(block_ids[:count])
        block_ids = block_ids[count:]

    kv_cache = torch.randn(2, num_blocks, block_size, num_kv_heads, head_dim, generator=gen, dtype=dtype)
    full_keys, full_values, new_q, new_k, new_v = [], [], [], [], []
    for (prefix, new), table in zip(seqs, tables, strict=True):
        ctx = prefix + new
        k = torch.randn(ctx, num_kv_heads, head_dim, generator=gen, dtype=dtype)
        v = torch.randn(ctx, num_kv_heads, head_dim, generator=gen, dtype=dtype)
        for pos in range(prefix):  # the cached prefix, written by earlier steps
            block, offset = table[pos // block_size], pos % block_size
            kv_cache[0, block, offset] = k[pos]
            kv_cache[1, block, offset] = v[pos]
        full_keys.append(k)
        full_values.append(v)
        new_q.append(torch.randn(new, num_heads, head_dim, generator=gen, dtype=dtype))
        new_k.append(k[prefix:])
        new_v.append(v[prefix:])
    layout = StepLayout(
        query_lens=[n for _, n in seqs],
        context_lens=[p + n for p, n in seqs],
        block_tables=tables,
        block_size=block_size,
    )
    return Scenario(layout, kv_cache, full_keys, full_values, torch.cat(new_q), torch.cat(new_k), torch.cat(new_v))


def naive_attention(sc: Scenario, scale: float) -> torch.Tensor:
    """Per sequence and head: explicit scores, causal mask by absolute position, softmax."""
    num_heads = sc.query.shape[1]
    group = num_heads // sc.key.shape[1]
    outputs = []
    row = 0
    for q_len, ctx, k, v in zip(sc.layout.query_lens, sc.layout.context_lens, sc.full_keys, sc.full_values, strict=True):
        q = sc.query[row : row + q_len].double()
        query_pos = torch.arange(ctx - q_len, ctx).unsqueeze(1)
        visible = torch.arange(ctx).unsqueeze(0) <= query_pos  # [q_len, ctx]
        out = torch.empty(q_len, num_heads, q.shape[-1], dtype=torch.float64)
        for h in range(num_heads):
            kh, vh = k[:, h // group].double(), v[:, h // group].double()
            scores = (q[:, h] @ kh.T) * scale
            scores = scores.masked_fill(~visible, float("-inf"))
            weights = torch.exp(scores - scores.max(dim=1, keepdim=True).values)
            out[:, h] = (weights / weights.sum(dim=1, keepdim=True)) @ vh
        outputs.append(out)
        row += q_len
    return torch.cat(outputs)


def run_backend(
    sc: Scenario, scale: float, decode_chunk_bytes: int | None = None, prefill_block_rows: int | None = 64
) -> torch.Tensor:
    backend = PortableAttentionBackend(decode_chunk_bytes, prefill_block_rows)
    metadata = backend.prepare(sc.layout, CPU)
    return backend.forward(sc.query, sc.key, sc.value, sc.kv_cache, metadata, scale)


MIXES = {
    "prefills": [(0, 5), (0, 17), (0, 2), (0, 33)],
    "decodes": [(4, 1), (0, 1), (31, 1), (16, 1), (15, 1), (47, 1)],
    "chunked_prefill": [(16, 9), (5, 20), (32, 16)],
    "mixed": [(7, 1), (0, 12), (20, 1), (16, 5), (3, 1), (0, 1), (40, 8)],
}


@pytest.mark.parametrize("mix", sorted(MIXES))
@pytest.mark.parametrize("block_size", [16, 4])
@pytest.mark.parametrize(("num_heads", "num_kv_heads"), [(4, 4), (9, 3), (4, 1)])
# (decode_chunk_bytes, prefill_block_rows): decodes in one call / a few sequences per call / one
# sequence per call; prefills by SDPA / matmuls in one block / in blocks of 3 query rows.
@pytest.mark.parametrize("tuning", [(2**40, None), (4096, 64), (1, 3)])
def test_matches_naive_reference(
    mix: str, block_size: int, num_heads: int, num_kv_heads: int, tuning: tuple[int | None, int | None]
) -> None:
    sc = make_scenario(MIXES[mix], block_size=block_size, num_heads=num_heads, num_kv_heads=num_kv_heads)
    scale = 1.0 / math.sqrt(sc.query.shape[-1])
    out = run_backend(sc, scale, *tuning)
    assert out.shape == sc.query.shape
    torch.testing.assert_close(out, naive_attention(sc, scale), rtol=1e-9, atol=1e-9)


def test_scale_is_applied() -> None:
    sc = make_scenario(MIXES["mixed"], block_size=4, num_heads=4, num_kv_heads=2)
    out = run_backend(sc, 0.37)
    torch.testing.assert_close(out, naive_attention(sc, 0.37), rtol=1e-9, atol=1e-9)


def test_cache_holds_new_keys_and_values_at_their_slots() -> None:
    sc = make_scenario(MIXES["mixed"], block_size=4, num_heads=9, num_kv_heads=3)
    before = sc.kv_cache.clone()
    run_backend(sc, 0.125)

    bs = sc.layout.block_size
    written = torch.zeros(sc.kv_cache.shape[1:3], dtype=torch.bool)
    for q_len, ctx, table, k, v in zip(
        sc.layout.query_lens, sc.layout.context_lens, sc.layout.block_tables, sc.full_keys, sc.full_values, strict=True
    ):
        for pos in range(ctx - q_len, ctx):
            block, offset = table[pos // bs], pos % bs
            assert torch.equal(sc.kv_cache[0, block, offset], k[pos])
            assert torch.equal(sc.kv_cache[1, block, offset], v[pos])
            written[block, offset] = True
    # Every other slot (cached prefixes, spare blocks, block tails) is left as it was.
    assert torch.equal(sc.kv_cache[:, ~written], before[:, ~written])


def test_decode_steps_continue_a_prefill() -> None:
    """Prefill in one step, then decode token by token through the same cache."""
    num_heads, num_kv_heads, d, bs = 6, 2, 8, 4
    gen = torch.Generator().manual_seed(3)
    total = 11
    k = torch.randn(total, num_kv_heads, d, generator=gen, dtype=torch.float64)
    v = torch.randn(total, num_kv_heads, d, generator=gen, dtype=torch.float64)
    q = torch.randn(total, num_heads, d, generator=gen, dtype=torch.float64)
    cache = torch.zeros(2, 5, bs, num_kv_heads, d, dtype=torch.float64)
    table = [3, 0, 4]
    backend = PortableAttentionBackend()
    outputs = []
    prompt = 6
    layout = StepLayout([prompt], [prompt], [table], bs)
    outputs.append(backend.forward(q[:prompt], k[:prompt], v[:prompt], cache, backend.prepare(layout, CPU), 0.3))
    for pos in range(prompt, total):
        layout = StepLayout([1], [pos + 1], [table], bs)
        sl = slice(pos, pos + 1)
        outputs.append(backend.forward(q[sl], k[sl], v[sl], cache, backend.prepare(layout, CPU), 0.3))

    # The whole sequence as one prefill from an empty cache gives the same outputs.
    fresh = torch.zeros_like(cache)
    layout = StepLayout([total], [total], [table], bs)
    whole = backend.forward(q, k, v, fresh, backend.prepare(layout, CPU), 0.3)
    torch.testing.assert_close(torch.cat(outputs), whole, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("prefill_block_rows", [None, 4])
def test_low_precision_dtypes(dtype: torch.dtype, prefill_block_rows: int | None) -> None:
    sc = make_scenario(MIXES["mixed"], block_size=16, num_heads=9, num_kv_heads=3, head_dim=16, dtype=dtype)
    out = run_backend(sc, 0.25, prefill_block_rows=prefill_block_rows)
    assert out.dtype == dtype
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(out.double(), naive_attention(sc, 0.25), rtol=tol, atol=tol)


@pytest.mark.parametrize("prefill_block_rows", [None, 4])
def test_non_contiguous_projections(prefill_block_rows: int | None) -> None:
    """q/k/v may be views into one fused projection output."""
    sc = make_scenario(MIXES["mixed"], block_size=4, num_heads=4, num_kv_heads=2)
    fused = torch.cat([sc.query.flatten(1), sc.key.flatten(1), sc.value.flatten(1)], dim=1)
    d = sc.query.shape[-1]
    q, k, v = fused.split([4 * d, 2 * d, 2 * d], dim=1)
    backend = PortableAttentionBackend(prefill_block_rows=prefill_block_rows)
    metadata = backend.prepare(sc.layout, CPU)
    out = backend.forward(q.view(-1, 4, d), k.view(-1, 2, d), v.view(-1, 2, d), sc.kv_cache, metadata, 0.5)
    torch.testing.assert_close(out, naive_attention(sc, 0.5), rtol=1e-9, atol=1e-9)


def test_reference_mask_semantics() -> None:
    layout = StepLayout(query_lens=[2, 1], context_lens=[3, 2], block_tables=[[0], [1]], block_size=4)
    inf = float("-inf")
    expected = torch.tensor(
        [
            [0.0, 0.0, inf, inf, inf],  # seq 0, position 1: sees positions 0..1
            [0.0, 0.0, 0.0, inf, inf],  # seq 0, position 2
            [inf, inf, inf, 0.0, 0.0],  # seq 1, position 1
        ]
    )
    assert torch.equal(reference_mask(layout), expected)


@pytest.mark.parametrize(
    "layout",
    [
        StepLayout([2], [1], [[0]], 4),  # more new tokens than context
        StepLayout([0], [3], [[0]], 4),  # empty query
        StepLayout([1], [9], [[0, 1]], 4),  # block table too short
        StepLayout([1, 1], [2], [[0]], 4),  # ragged lists
    ],
)
def test_invalid_layout_is_refused(layout: StepLayout) -> None:
    with pytest.raises(AttentionLayoutError):
        PortableAttentionBackend().prepare(layout, CPU)


def test_gqa_head_mismatch_is_refused() -> None:
    sc = make_scenario([(0, 3)], block_size=4, num_heads=4, num_kv_heads=4)
    backend = PortableAttentionBackend()
    metadata = backend.prepare(sc.layout, CPU)
    cache = torch.zeros(2, sc.kv_cache.shape[1], 4, 3, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="multiple"):
        backend.forward(sc.query, sc.key[:, :3], sc.value[:, :3], cache, metadata, 1.0)


@pytest.mark.parametrize("kwargs", [{"decode_chunk_bytes": 0}, {"prefill_block_rows": 0}])
def test_invalid_tuning_is_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        PortableAttentionBackend(**kwargs)
