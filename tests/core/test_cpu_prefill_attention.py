"""The CPU paged attention kernel's blocked path for prefill rows (csrc/paged_prefill.c).

The kernel attends consecutive rows that read the same block table (a prefill chunk) in blocks
of rows per kv head, every other row alone. Each row's result must be bitwise what the one-row
kernel computes for it (`rows_alone=True` forces that kernel for every row), so these tests hold
the blocked path to it bit for bit, and to a float64 reference within float32 rounding: causal
rows over a cached prefix, GQA, odd head sizes and lengths, chunks that start and end inside or
on block boundaries, rows beyond one block of rows. Then the invariances that follow: a prefill
token equals a decode at its position, the result does not depend on how a prompt is chunked,
on the other rows of the step, or on the thread count. Greedy output of the engine is the same
with the blocked path and without it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from fixtures_models import TinyModel
from ziggurat_core.engine import InferenceEngine, SamplingParams
from ziggurat_core.engine.config import EngineConfig
from ziggurat_core.engine.cpu_kernels import PagedAttentionKernel, load_paged_attention_kernel

CACHE_DTYPES = [torch.float32, torch.float16]
# Cache slots outside every context hold values this large: a row that reads one (a wrong block,
# an off-by-one at a block edge) is far off the reference.
NOISE_SCALE = 8.0
TOL = 2e-5


@pytest.fixture(scope="module")
def kernel(cpu_kernels: None) -> PagedAttentionKernel:
    loaded = load_paged_attention_kernel()
    assert loaded is not None, "a C compiler is present but the kernel did not build"
    return loaded


def needs(kernel: PagedAttentionKernel, cache_dtype: torch.dtype) -> None:
    if cache_dtype not in kernel.cache_dtypes:
        pytest.skip(f"this build reads no {cache_dtype} cache")


@dataclass
class Sequences:
    """Sequences whose whole contexts are in a paged cache (blocks scattered at random, noise
    in every other slot), and one query row per position of each."""

    kv_cache: torch.Tensor  # [2, num_blocks, block_size, kvh, d]
    tables: list[list[int]]
    keys: list[torch.Tensor]  # [context_len, kvh, d] as stored (rounded to the cache dtype)
    values: list[torch.Tensor]
    queries: list[torch.Tensor]  # [context_len, H, d]: the query of the token at each position
    block_size: int

    def rows(
        self, spans: list[tuple[int, int, int]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Kernel inputs for rows (sequence, first position, count), in that order, as the
        backend's `kernel_rows` builds them: (query, tables, context_lens, token_rows, out)."""
        width = max(len(t) for t in self.tables)
        queries, tables, lens = [], [], []
        for seq, first, count in spans:
            queries.append(self.queries[seq][first : first + count])
            table = self.tables[seq] + [0] * (width - len(self.tables[seq]))
            tables += [table] * count
            lens += range(first + 1, first + count + 1)
        query = torch.cat(queries).contiguous()
        rows = torch.arange(query.shape[0], dtype=torch.int64)
        out = torch.full(query.shape, -7777.0)
        return query, torch.tensor(tables, dtype=torch.int64), torch.tensor(lens), rows, out

    def reference(self, seq: int, first: int, count: int, scale: float) -> torch.Tensor:
        """float64 [count, H, d]: positions first .. first + count - 1 of `seq`, causal."""
        q = self.queries[seq][first : first + count].double()
        group = q.shape[1] // self.keys[seq].shape[1]
        k = self.keys[seq].double().repeat_interleave(group, dim=1)
        v = self.values[seq].double().repeat_interleave(group, dim=1)
        scores = torch.einsum("thd,shd->hts", q, k) * scale
        positions = torch.arange(k.shape[0])
        visible = positions.unsqueeze(0) <= torch.arange(first, first + count).unsqueeze(1)
        scores = scores.masked_fill(~visible, float("-inf"))
        return torch.einsum("hts,shd->thd", torch.softmax(scores, dim=-1), v)


def make_sequences(
    lengths: list[int],
    *,
    block_size: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    cache_dtype: torch.dtype,
    seed: int = 0,
) -> Sequences:
    gen = torch.Generator().manual_seed(seed)
    needed = [-(-n // block_size) for n in lengths]
    num_blocks = sum(needed) + 7
    free = list(range(num_blocks))
    random.Random(seed).shuffle(free)
    tables = []
    for count in needed:
        tables.append(free[:count])
        free = free[count:]
    kv_cache = torch.randn(2, num_blocks, block_size, num_kv_heads, head_dim, generator=gen)
    kv_cache *= NOISE_SCALE
    keys, values, queries = [], [], []
    for n, table in zip(lengths, tables, strict=True):
        # Scores spread widely enough that the softmax meets large negative exponents.
        k = torch.randn(n, num_kv_heads, head_dim, generator=gen) * 2
        v = torch.randn(n, num_kv_heads, head_dim, generator=gen)
        for pos in range(n):
            kv_cache[0, table[pos // block_size], pos % block_size] = k[pos]
            kv_cache[1, table[pos // block_size], pos % block_size] = v[pos]
        keys.append(k.to(cache_dtype).float())
        values.append(v.to(cache_dtype).float())
        queries.append(torch.randn(n, num_heads, head_dim, generator=gen))
    return Sequences(kv_cache.to(cache_dtype), tables, keys, values, queries, block_size)


def attend(
    kernel: PagedAttentionKernel,
    seqs: Sequences,
    spans: list[tuple[int, int, int]],
    scale: float,
    rows_alone: bool = False,
) -> torch.Tensor:
    query, tables, lens, rows, out = seqs.rows(spans)
    kernel(query, seqs.kv_cache, tables, lens, rows, out, scale, rows_alone=rows_alone)
    return out


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.view(torch.int32), b.view(torch.int32))


# (lengths of the sequences, rows of the step as (sequence, first position, count)): chunks
# with and without a cached prefix, starting and ending on and off block edges, longer than a
# block of rows (16), next to decode rows and to another chunk.
STEPS = [
    ([40], [(0, 0, 40)]),
    ([77, 23], [(0, 30, 47), (1, 22, 1)]),
    ([5, 300, 17], [(1, 0, 1), (0, 2, 3), (2, 16, 1), (1, 250, 50)]),
    ([33, 64], [(1, 15, 34), (0, 31, 2)]),
]


@pytest.mark.parametrize("cache_dtype", CACHE_DTYPES, ids=str)
@pytest.mark.parametrize(
    ("num_heads", "num_kv_heads", "head_dim", "block_size"),
    [
        (9, 3, 64, 16),
        # head_dim 64 has a one-row kernel of its own on x86 (csrc/attend_row_x86.h), which
        # walks blocks smaller and larger than its tile of 16 tokens
        (6, 2, 64, 5),
        (4, 4, 64, 32),
        # more query heads per kv head than the x86 kernel takes at once (4): 4 + 3, 4 + 4 + 2
        (14, 2, 64, 16),
        (10, 1, 64, 7),
        (4, 2, 128, 16),
        (6, 2, 72, 5),
        (3, 3, 80, 8),
        (2, 1, 6, 16),
        (8, 1, 40, 3),
    ],
)
@pytest.mark.parametrize("step", range(len(STEPS)))
def test_blocked_rows_match_float64_and_the_one_row_kernel_bit_for_bit(
    kernel: PagedAttentionKernel,
    cache_dtype: torch.dtype,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    step: int,
) -> None:
    needs(kernel, cache_dtype)
    lengths, spans = STEPS[step]
    seqs = make_sequences(
        lengths,
        block_size=block_size,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        cache_dtype=cache_dtype,
        seed=step,
    )
    scale = head_dim**-0.5
    blocked = attend(kernel, seqs, spans, scale)
    alone = attend(kernel, seqs, spans, scale, rows_alone=True)
    assert same_bits(blocked, alone), f"{int((blocked != alone).sum())} values differ"
    expected = torch.cat([seqs.reference(seq, first, count, scale) for seq, first, count in spans])
    torch.testing.assert_close(blocked.double(), expected, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("cache_dtype", CACHE_DTYPES, ids=str)
def test_prompt_gives_the_same_bits_in_any_chunking_and_as_decodes(
    kernel: PagedAttentionKernel, cache_dtype: torch.dtype
) -> None:
    needs(kernel, cache_dtype)
    length = 203
    seqs = make_sequences(
        [length], block_size=16, num_heads=9, num_kv_heads=3, head_dim=64,
        cache_dtype=cache_dtype, seed=5,
    )
    whole = attend(kernel, seqs, [(0, 0, length)], 0.125)
    for cuts in ([64, 128], [1, 17, 100, 101], [31, 32, 33, 190]):
        bounds = [0, *cuts, length]
        chunks = [
            attend(kernel, seqs, [(0, a, b - a)], 0.125)
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        ]
        assert same_bits(torch.cat(chunks), whole), cuts
    decodes = torch.cat([attend(kernel, seqs, [(0, p, 1)], 0.125) for p in range(length)])
    assert same_bits(decodes, whole)


@pytest.mark.parametrize("cache_dtype", CACHE_DTYPES, ids=str)
def test_chunk_result_is_independent_of_the_other_rows_and_of_threads(
    kernel: PagedAttentionKernel, cache_dtype: torch.dtype
) -> None:
    needs(kernel, cache_dtype)
    seqs = make_sequences(
        [150, 40, 90], block_size=16, num_heads=9, num_kv_heads=3, head_dim=64,
        cache_dtype=cache_dtype, seed=9,
    )
    chunk = (0, 70, 80)
    alone = attend(kernel, seqs, [chunk], 0.125)
    crowded = attend(kernel, seqs, [(1, 39, 1), chunk, (2, 0, 90), (1, 10, 1)], 0.125)
    assert same_bits(crowded[1:81], alone)
    threads = torch.get_num_threads()
    try:
        results = []
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            results.append(attend(kernel, seqs, [(1, 39, 1), chunk, (2, 0, 90)], 0.125))
    finally:
        torch.set_num_threads(threads)
    assert all(same_bits(r, results[0]) for r in results[1:])
    assert same_bits(results[0][1:81], alone)


@pytest.mark.parametrize("kv_cache_dtype", ["float32", "float16"])
def test_engine_greedy_tokens_equal_with_blocked_prefill_and_rows_alone(
    kernel: PagedAttentionKernel,
    tiny_llama: TinyModel,
    kv_cache_dtype: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Chunked prompts (a budget of 24 tokens a step) next to decodes, through the engine: the
    same greedy tokens whether prefill rows take the blocked path or every row goes alone."""
    needs(kernel, getattr(torch, kv_cache_dtype))
    monkeypatch.delenv("ZIGGURAT_CPU_KERNELS", raising=False)
    rng = random.Random(3)
    vocab = tiny_llama.config.vocab_size
    prompts = [[rng.randrange(3, vocab) for _ in range(n)] for n in (61, 9, 37, 100)]
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    original = PagedAttentionKernel.__call__
    calls: list[tuple[int, bool]] = []  # (rows, rows_alone) of each kernel call

    def recording(self: PagedAttentionKernel, *args: Any, rows_alone: bool = False) -> None:
        calls.append((int(args[4].numel()), rows_alone))
        original(self, *args, rows_alone=rows_alone)

    def forcing_rows_alone(self: PagedAttentionKernel, *args: Any, rows_alone: bool = False) -> None:
        recording(self, *args, rows_alone=True)

    def generate() -> list[list[int]]:
        config = EngineConfig(
            model=str(tiny_llama.gguf_path), block_size=16, kv_cache_dtype=kv_cache_dtype,
            max_num_batched_tokens=24,
        )
        engine = InferenceEngine(config)
        for i, prompt in enumerate(prompts):
            engine.add_request(f"r{i}", prompt_token_ids=prompt, sampling_params=params)
        done = {o.request_id: o for o in engine.get_outputs() if o.finished}
        return [done[f"r{i}"].outputs[0].token_ids for i in range(len(prompts))]

    monkeypatch.setattr(PagedAttentionKernel, "__call__", recording)
    blocked = generate()
    assert max(rows for rows, _ in calls) == 24 and not any(alone for _, alone in calls)
    calls.clear()
    monkeypatch.setattr(PagedAttentionKernel, "__call__", forcing_rows_alone)
    assert generate() == blocked
    assert calls and all(alone for _, alone in calls)
    assert all(len(tokens) == 12 for tokens in blocked)
