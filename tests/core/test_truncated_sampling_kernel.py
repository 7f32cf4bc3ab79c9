"""The top-k / top-p sampling C kernel (`sample_truncated` of csrc/sampling.c,
cpu_kernels/sampling.py).

Against a float64 reference of the sampler's semantics (sorted by weight, ties by lower id; the
first k; the tokens while the mass before them is below top_p of what top-k kept, at least one;
inverse CDF over those):
- a uniform in the middle of a kept token's interval picks exactly that token;
- no token outside the top k or the nucleus, below min_p or masked, at any uniform;
- the torch path's tokens;
- the same tokens in the AVX2 and scalar builds, the AArch64 build (cross-compiled, run under
  qemu) and at 1, 2 or 3 threads;
- many draws follow the renormalised distribution.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from int8_helpers import generator, runnable_isas
from sampling_helpers import (
    LAST_UNIFORM,
    MIN_PROBABILITY,
    VOCAB_SIZES,
    aarch64_tokens,
    clear_of_threshold,
    kernel_for,
    loaded_kernel,
    masked_row,
    random_logits,
    reference_weights,
    wide_batch,
)
from ziggurat_core.engine import torch_sampling
from ziggurat_core.engine.cpu_kernels import SamplingKernel
from ziggurat_core.engine.cpu_kernels.build import KernelError

pytestmark = pytest.mark.usefixtures("cpu_kernels")


@pytest.fixture(scope="module")
def kernel() -> SamplingKernel:
    return loaded_kernel()


def _sample_truncated(
    kernel: SamplingKernel,
    logits: torch.Tensor,
    temperature: float | list[float],
    uniforms: list[float],
    top_k: int | list[int],
    top_p: float | list[float],
    min_p: float | list[float] | None = None,
    num_threads: int | None = None,
) -> list[int]:
    rows = logits.shape[0]

    def values(value: float | list[float] | int | list[int]) -> list[float] | list[int]:
        return value if isinstance(value, list) else [value] * rows  # type: ignore[return-value]

    tokens = kernel.sample_truncated(
        logits.contiguous(),
        torch.tensor(values(temperature), dtype=torch.float32).unsqueeze(1),
        None if min_p is None else torch.tensor(values(min_p), dtype=torch.float32),
        torch.tensor(values(top_k), dtype=torch.int64),
        torch.tensor(values(top_p), dtype=torch.float64),
        torch.tensor(uniforms, dtype=torch.float64),
        num_threads,
    )
    return [int(t) for t in tokens]


def _nucleus(weights: np.ndarray, top_k: int, top_p: float) -> tuple[np.ndarray, np.ndarray]:
    """The float64 reference of the kernel's semantics: the kept token ids in sorted order (by
    weight, descending, equal weights by lower id) and the mass before each of them."""
    positive = np.flatnonzero(weights > 0)
    order = positive[np.lexsort((positive, -weights[positive]))]
    sorted_weights = weights[order]
    before = np.cumsum(sorted_weights) - sorted_weights
    k_kept = min(top_k, order.size)
    kept = k_kept
    if top_p < 1.0:
        mass = sorted_weights[:k_kept].sum() if top_k < weights.size else weights.sum()
        kept = max(1, int(np.count_nonzero(before[:k_kept] < top_p * mass)))
    return order[:kept], before[:kept]


def _clear_settings(weights: np.ndarray, top_k: int, top_p: float) -> tuple[int, float]:
    """(top_k, top_p) near the asked ones whose cut-offs are far from any rounding: k moved up
    past weights equal to the k-th within 1e-4; a top_p placed in the middle of the boundary
    token's interval of mass, that token's weight at least 1e-3 of the mass (fewer tokens
    kept where the asked nucleus ends in smaller ones)."""
    positive = np.sort(weights[weights > 0])[::-1]
    while top_k < positive.size and positive[top_k] >= positive[top_k - 1] * (1 - 1e-4):
        top_k += 1
    if top_p >= 1.0:
        return top_k, top_p
    k_kept = min(top_k, positive.size)
    mass = positive[:k_kept].sum() if top_k < weights.size else weights.sum()
    before = np.cumsum(positive) - positive
    kept = max(1, int(np.count_nonzero(before[:k_kept] < top_p * mass)))
    while kept > 1 and positive[kept - 1] < 1e-3 * mass:
        kept -= 1
    return top_k, float((before[kept - 1] + positive[kept - 1] / 2) / mass)


def _truncated_cases(
    logits: torch.Tensor, temperature: float, min_p: float, top_k: int, top_p: float, seed: int
) -> tuple[list[int], list[int], list[float], list[int], list[float]]:
    """Rows, expected tokens, uniforms and the (cleared) settings: up to 12 kept tokens of each
    row, with at least MIN_PROBABILITY of the kept mass, each with the middle uniform of its
    interval; always the most and the least likely kept tokens that qualify."""
    rng = np.random.default_rng(seed)
    rows, tokens, uniforms, ks, ps = [], [], [], [], []
    for r in range(logits.shape[0]):
        weights = reference_weights(logits[r], temperature, min_p)
        k, p = _clear_settings(weights, top_k, top_p)
        kept, before = _nucleus(weights, k, p)
        kept_weights = weights[kept]
        total = kept_weights.sum()
        eligible = np.flatnonzero(kept_weights / total >= MIN_PROBABILITY)
        picked = set(rng.choice(eligible, size=min(10, eligible.size), replace=False).tolist())
        for i in sorted(picked | {int(eligible[0]), int(eligible[-1])}):
            rows.append(r)
            tokens.append(int(kept[i]))
            uniforms.append(float((before[i] + kept_weights[i] / 2) / total))
            ks.append(k)
            ps.append(p)
    return rows, tokens, uniforms, ks, ps


TRUNCATIONS = [(1, 1.0), (5, 1.0), (40, 1.0), (None, 0.5), (None, 0.9), (40, 0.9), (3, 0.95)]


@pytest.mark.parametrize("vocab", VOCAB_SIZES)
@pytest.mark.parametrize("temperature", [0.05, 0.7, 2.5])
@pytest.mark.parametrize("min_p", [None, 0.05])
def test_truncated_picks_the_token_whose_kept_interval_holds_the_uniform(
    kernel: SamplingKernel, vocab: int, temperature: float, min_p: float | None
) -> None:
    logits = random_logits(4, vocab, seed=vocab + int(temperature * 100) + 7)
    if min_p is not None:
        logits = clear_of_threshold(logits, temperature, min_p)
    for top_k, top_p in TRUNCATIONS:
        k = vocab if top_k is None else top_k
        rows, expected, uniforms, ks, ps = _truncated_cases(
            logits, temperature, min_p or 0.0, k, top_p, seed=vocab + k
        )
        got = _sample_truncated(kernel, logits[rows], temperature, uniforms, ks, ps, min_p)
        assert got == expected, f"top_k={top_k} top_p={top_p}"


def test_truncated_rows_of_one_batch_use_their_own_settings(kernel: SamplingKernel) -> None:
    row = random_logits(1, 1000, seed=4)
    settings = [  # (temperature, min_p, top_k, top_p)
        (0.7, 0.0, 40, 1.0),
        (1.0, 0.0, 1000, 0.9),
        (1.0, 0.05, 10, 0.8),
        (2.0, 0.0, 2, 1.0),
    ]
    batch, temperatures, min_ps, expected, uniforms, ks, ps = [], [], [], [], [], [], []
    for seed, (temperature, min_p, top_k, top_p) in enumerate(settings):
        clear = clear_of_threshold(row, temperature, min_p) if min_p else row
        _, tokens, us, k, p = _truncated_cases(clear, temperature, min_p, top_k, top_p, seed)
        batch += [clear[0]] * len(tokens)
        temperatures += [temperature] * len(tokens)
        min_ps += [min_p] * len(tokens)
        expected += tokens
        uniforms += us
        ks += k
        ps += p
    got = _sample_truncated(kernel, torch.stack(batch), temperatures, uniforms, ks, ps, min_ps)
    assert got == expected
    assert len(set(expected)) > 15


@pytest.mark.parametrize("vocab", [1, 7, 1000])
def test_k_at_or_beyond_the_vocabulary_and_p_one_truncate_nothing(
    kernel: SamplingKernel, vocab: int
) -> None:
    # Nothing is cut, the CDF runs in sorted order: the least likely tokens are reachable too.
    logits = random_logits(5, vocab, seed=vocab)
    rows, expected, uniforms, _, _ = _truncated_cases(logits, 0.8, 0.0, vocab, 1.0, seed=vocab)
    for top_k in (vocab, vocab + 5):
        assert _sample_truncated(kernel, logits[rows], 0.8, uniforms, top_k, 1.0) == expected
    # The largest uniform draws the least likely token, 0 the most likely.
    for top_k in (vocab, vocab + 5):
        ends = _sample_truncated(kernel, logits, 0.8, [0.0, LAST_UNIFORM] * 2 + [0.0], top_k, 1.0)
        ends_expected = [logits[r].argmax() if r % 2 == 0 else logits[r].argmin() for r in range(5)]
        assert ends == [int(token) for token in ends_expected]


def test_top_k_one_and_tiny_top_p_keep_only_the_most_likely_token(kernel: SamplingKernel) -> None:
    # Out-of-range values (validated before the sampler) still keep one token, never none.
    logits = random_logits(6, 1000, seed=9)
    uniforms = [0.0, 0.5, LAST_UNIFORM]
    for r in range(logits.shape[0]):
        row = logits[r : r + 1].expand(len(uniforms), -1)
        for top_k, top_p in ((1, 1.0), (1000, 1e-9), (7, 1e-9), (0, 1.0), (-5, 0.9), (9, 0.0)):
            got = _sample_truncated(kernel, row, 1.0, uniforms, top_k, top_p)
            assert got == [int(logits[r].argmax())] * len(uniforms)


def test_top_p_just_below_one_drops_only_the_tail(kernel: SamplingKernel) -> None:
    # Two tokens hold all but 1.4e-11 of the mass: top_p = 1 - 1e-9 drops the other two, at
    # top_p = 1 the largest uniform reaches the least likely.
    row = torch.tensor([[0.0, -30.0, 0.0, float("-inf"), -25.0]])
    uniforms = [0.0, 0.4999, 0.5001, LAST_UNIFORM]
    top_p = 1.0 - 1e-9
    got = _sample_truncated(kernel, row.expand(4, -1), 1.0, uniforms, 5, top_p)
    assert got == [0, 0, 2, 2]
    assert _sample_truncated(kernel, row.expand(4, -1), 1.0, uniforms, 5, 1.0)[-1] == 1


def test_a_token_whose_mass_before_is_exactly_top_p_is_dropped(kernel: SamplingKernel) -> None:
    # Four weights of exactly 1: at top_p 0.5 the third token has 2.0 = 0.5 * 4.0 before it (no
    # rounding anywhere), which is not below top_p's share: two tokens are kept, the lowest ids.
    row = masked_row(300, {250: 0.0, 7: 0.0, 120: 0.0, 299: 0.0}).unsqueeze(0)
    uniforms = [0.0, 0.4999, 0.5001, LAST_UNIFORM]
    for top_k, top_p in ((300, 0.5), (4, 0.5), (3, 2 / 3)):
        got = _sample_truncated(kernel, row.expand(4, -1), 1.0, uniforms, top_k, top_p)
        assert got == [7, 7, 120, 120], f"top_k={top_k} top_p={top_p}"


def test_equal_weights_are_kept_and_drawn_lower_id_first(kernel: SamplingKernel) -> None:
    # Eight tied maxima spread over the row, then smaller tokens: top-k 3 keeps the three with
    # the lowest ids, top-p 0.5 of the tied mass (8 of ~8.3) keeps the first five.
    vocab = 1000
    tied = [900, 3, 517, 256, 999, 0, 64, 700]
    row = torch.full((vocab,), -20.0)
    row[tied] = 5.0
    row[[10, 20, 30]] = 2.0
    uniforms = [(i + 0.5) / 10 for i in range(10)] + [0.0, LAST_UNIFORM]
    batch = row.unsqueeze(0).expand(len(uniforms), -1)
    by_id = sorted(tied)
    got = _sample_truncated(kernel, batch, 1.0, uniforms, 3, 1.0)
    assert set(got) == set(by_id[:3]) and got[-2] == by_id[0] and got[-1] == by_id[2]
    got = _sample_truncated(kernel, batch, 1.0, uniforms, vocab, 0.5)
    assert set(got) == set(by_id[:5]) and got[-2] == by_id[0] and got[-1] == by_id[4]
    assert got[:10] == sorted(got[:10])  # in the CDF, equal weights lie in id order


@pytest.mark.parametrize("vocab", [7, 3000, 49152])
def test_truncated_never_draws_outside_what_it_keeps(kernel: SamplingKernel, vocab: int) -> None:
    rows = 48
    gen = generator(vocab)
    logits = torch.randn(rows, vocab, generator=gen) * 3
    keep = torch.rand(rows, vocab, generator=gen) < torch.rand(rows, 1, generator=gen) * 0.5
    keep[torch.arange(rows), torch.randint(vocab, (rows,), generator=gen)] = True
    logits[~keep] = float("-inf")
    uniforms = torch.rand(rows, dtype=torch.float64, generator=gen).tolist()
    uniforms[::3] = [0.0, LAST_UNIFORM] * (rows // 6)
    temperature = [(0.5, 1.0, 2.0)[r % 3] for r in range(rows)]
    min_p = [(0.0, 0.1)[r % 2] for r in range(rows)]
    top_k = [(1, 3, 50, vocab)[r % 4] for r in range(rows)]
    top_p = [(0.3, 0.9, 1.0, 0.999)[(r // 4) % 4] for r in range(rows)]
    got = _sample_truncated(kernel, logits, temperature, uniforms, top_k, top_p, min_p)
    for r, token in enumerate(got):
        weights = reference_weights(logits[r], temperature[r], 0.0)
        assert bool(keep[r, token]), f"row {r} drew masked token {token}"
        assert weights[token] >= min_p[r] * (1 - 1e-5), f"row {r}: {token} is below min_p"
        # Outside the top k: more than k tokens clearly more likely. Outside the nucleus: the
        # clearly more likely ones alone reach top_p of the mass.
        above = weights > weights[token] * (1 + 1e-4)
        assert np.count_nonzero(above) < top_k[r], f"row {r}: {token} is outside the top k"
        if top_p[r] < 1.0:
            positive = np.where(weights >= min_p[r] * (1 + 1e-4), weights, 0.0)
            ranked = np.sort(positive)[::-1]
            mass = ranked[: top_k[r]].sum() if top_k[r] < vocab else positive.sum()
            nucleus_end = top_p[r] * mass * (1 + 1e-4)
            assert positive[above].sum() < nucleus_end, f"row {r}: {token} is outside the nucleus"


def test_truncated_equals_the_torch_path(kernel: SamplingKernel) -> None:
    # Rows without ties (random logits), cut-offs and uniforms clear of roundings.
    vocab = 5000
    logits = random_logits(6, vocab, seed=31)
    batch, expected_rows, uniforms, ks, ps = [], [], [], [], []
    for top_k, top_p in TRUNCATIONS:
        k = vocab if top_k is None else top_k
        rows, _, us, row_ks, row_ps = _truncated_cases(logits, 0.9, 0.0, k, top_p, seed=k)
        batch += rows
        uniforms += us
        ks += row_ks
        ps += row_ps
        expected_rows += rows
    chosen = logits[batch]
    temperature = torch.full((len(batch), 1), 0.9)
    via_torch = torch_sampling.sample_top_k_top_p(
        torch_sampling.weights(chosen, temperature, None),
        torch.tensor(ks),
        torch.tensor(ps, dtype=torch.float64),
        torch.tensor(uniforms, dtype=torch.float64),
    ).tolist()
    assert _sample_truncated(kernel, chosen, 0.9, uniforms, ks, ps) == via_torch
    assert len(set(via_torch)) > 40


TruncatedBatch = tuple[torch.Tensor, list[float], list[float], list[float], list[int], list[float]]


def _wide_truncated_batch() -> TruncatedBatch:
    """`wide_batch` with top-k and top-p settings (random uniforms, not kept from edges)."""
    logits, temperature, uniforms, min_p = wide_batch()
    rows = logits.shape[0]
    top_k = [(1, 40, 1000, 49152)[r % 4] for r in range(rows)]
    top_p = [(0.9, 1.0, 0.95, 0.5, 0.999)[r % 5] for r in range(rows)]
    return logits, temperature, uniforms, min_p, top_k, top_p


@pytest.mark.parametrize("isa", runnable_isas())
def test_truncated_in_every_variant_and_thread_count(kernel: SamplingKernel, isa: str) -> None:
    logits, temperature, uniforms, min_p, top_k, top_p = _wide_truncated_batch()
    args = (temperature, uniforms, top_k, top_p, min_p)
    expected = _sample_truncated(kernel, logits, *args, num_threads=1)
    variant = kernel_for(isa)
    for num_threads in (1, 2, 3):
        assert _sample_truncated(variant, logits, *args, num_threads=num_threads) == expected
    assert len(set(expected)) > 30
    # A row's token does not depend on the other rows.
    one = (temperature[6], uniforms[6:7], top_k[6], top_p[6], min_p[6])
    assert _sample_truncated(variant, logits[6:7], *one) == expected[6:7]


@pytest.mark.usefixtures("arm_toolchain")
def test_the_aarch64_build_chooses_the_truncated_tokens_of_this_build(
    kernel: SamplingKernel, tmp_path: Path
) -> None:
    logits, temperature, uniforms, min_p, top_k, top_p = _wide_truncated_batch()
    per_row = [np.array(temperature, dtype=np.float32), np.array(min_p, dtype=np.float32),
               np.array(top_k, dtype=np.int64), np.array(top_p, dtype=np.float64),
               np.array(uniforms, dtype=np.float64)]
    got = aarch64_tokens(tmp_path, "truncated", logits, per_row)
    assert got == _sample_truncated(kernel, logits, temperature, uniforms, top_k, top_p, min_p)
    assert len(set(got)) > 30


# Chi-square bound for 4 degrees of freedom at p ~ 1e-5 (seeded: deterministic).
CHI2_BOUND_4 = 28.5


@pytest.mark.parametrize("top_k, top_p", [(5, 1.0), (12, 0.85), (8, 0.85)])
def test_truncated_draws_follow_the_renormalised_distribution(
    kernel: SamplingKernel, top_k: int, top_p: float
) -> None:
    # Probabilities 0.269, 0.208, 0.163, 0.125, 0.099, then 0.136 in the 7 others: the top 4
    # hold 0.765 (0.787 of the top 8's mass), the top 5 0.864 (0.889), so each setting keeps
    # exactly the top 5 tokens.
    logits = torch.tensor([2.0, 1.74, 1.5, 1.23, 1.0, 0.0, -0.3, -1.0, -1.5, -2.0, -3.0, 0.2])
    probs = torch.softmax(logits.double(), dim=0).numpy()
    order = np.argsort(-probs, kind="stable")[:5]
    expected = probs[order] / probs[order].sum()
    draws = 30000
    uniforms = torch.rand(draws, dtype=torch.float64, generator=generator(top_k)).tolist()
    got = _sample_truncated(kernel, logits.expand(draws, -1), 1.0, uniforms, top_k, top_p)
    counts = Counter(got)
    assert set(counts) == set(order.tolist())
    pairs = zip(order.tolist(), expected, strict=True)
    chi_square = sum((counts[t] - draws * p) ** 2 / (draws * p) for t, p in pairs)
    assert chi_square < CHI2_BOUND_4


def test_truncated_rejects_inputs_it_cannot_read(kernel: SamplingKernel) -> None:
    logits = torch.zeros(2, 5)
    temperature = torch.ones(2, 1)
    top_k = torch.full((2,), 3, dtype=torch.int64)
    top_p = torch.full((2,), 0.9, dtype=torch.float64)
    uniforms = torch.zeros(2, dtype=torch.float64)
    with pytest.raises(KernelError, match="logits"):
        kernel.sample_truncated(logits.double(), temperature, None, top_k, top_p, uniforms)
    with pytest.raises(KernelError, match="temperature"):
        kernel.sample_truncated(logits, torch.ones(3), None, top_k, top_p, uniforms)
    with pytest.raises(KernelError, match="top_k"):
        kernel.sample_truncated(logits, temperature, None, top_k.int(), top_p, uniforms)
    with pytest.raises(KernelError, match="top_p"):
        kernel.sample_truncated(logits, temperature, None, top_k, top_p.float(), uniforms)
    with pytest.raises(KernelError, match="uniforms"):
        kernel.sample_truncated(logits, temperature, None, top_k, top_p, uniforms[:1])
    with pytest.raises(KernelError, match="columns"):
        kernel.sample_truncated(torch.zeros(2, 0), temperature, None, top_k, top_p, uniforms)
