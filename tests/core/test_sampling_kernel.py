"""The temperature-sampling C kernel (csrc/sampling.c, cpu_kernels/sampling.py).

- It draws by inverse CDF from softmax(logits / T) with min_p: against a float64 reference, a
  uniform placed in the middle of a token's CDF interval (so float32 rounding cannot move it out)
  picks exactly that token, for vocabularies that are not multiples of the block or vector width.
- It never picks a token of zero weight (-inf logits, tokens below min_p), even at u = 0 and at
  the largest uniform below 1, and tiny temperatures do not turn the maximum into NaN.
- The AVX2 and scalar builds, the AArch64 build (cross-compiled, run under qemu) and 1, 2 or 3
  threads choose the tokens of the native build.
- Many draws from one row follow its softmax at the requested temperature.
- The greedy argmax equals torch.argmax (the first of equal maxima, across and within its
  blocks; rows of -inf), in every build and at every thread count.
- With top-k / top-p (`sample_truncated`): against a float64 reference of the sampler's
  semantics (sorted by weight, ties by lower id; the first k; the tokens while the mass before
  them is below top_p of what top-k kept, at least one; inverse CDF over those), a middle
  uniform picks exactly its token; no token outside the top k or the nucleus, below min_p or
  masked, at any uniform; the torch path's tokens; the same tokens in every build and at every
  thread count; many draws follow the renormalised distribution.
- The sampler runs them for every random row on CPU float32 logits, with the same uniforms as
  its torch path: both paths choose the same tokens for the same seeds.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from arm_qemu import CC, CSRC, TARGETS, library_flags, run_command, run_driver
from int8_helpers import generator, runnable_isas
from ziggurat_core.engine import torch_sampling
from ziggurat_core.engine.cpu_kernels import SamplingKernel, load_sampling_kernel
from ziggurat_core.engine.cpu_kernels.build import KernelError
from ziggurat_core.engine.sampler import Sampler
from ziggurat_core.engine.sampling_params import SamplingParams
from ziggurat_core.engine.sequence import SequenceState

pytestmark = pytest.mark.usefixtures("cpu_kernels")

CPU = torch.device("cpu")
EOS = 1
VOCAB_SIZES = [1, 7, 63, 1000, 49152]
TEMPERATURES = [0.05, 0.7, 1.0, 2.5]
# The kernel's weights are within ~1e-5 (relative) of float64's, its prefix sums within ~1e-5 of
# the total: a token is only asked for where half its interval is far wider than that.
MIN_PROBABILITY = 1e-4
LAST_UNIFORM = float(np.nextafter(1.0, 0.0))


def _kernel_for(isa: str) -> SamplingKernel:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ZIGGURAT_CPU_ISA", isa)
        kernel = load_sampling_kernel()
    assert kernel is not None, "the CPU kernels failed to load"
    return kernel


@pytest.fixture(scope="module")
def kernel() -> SamplingKernel:
    """The kernel of the native build, or of the variant ZIGGURAT_CPU_ISA forces."""
    loaded = load_sampling_kernel()
    assert loaded is not None, "the CPU kernels failed to load"
    return loaded


def _sample(
    kernel: SamplingKernel,
    logits: torch.Tensor,
    temperature: float | list[float],
    uniforms: list[float],
    min_p: float | list[float] | None = None,
    num_threads: int | None = None,
) -> list[int]:
    rows = logits.shape[0]

    def column(value: float | list[float]) -> torch.Tensor:
        values = value if isinstance(value, list) else [value] * rows
        return torch.tensor(values, dtype=torch.float32).unsqueeze(1)

    tokens = kernel.sample(
        logits.contiguous(),
        column(temperature),
        None if min_p is None else column(min_p),
        torch.tensor(uniforms, dtype=torch.float64),
        num_threads,
    )
    return [int(t) for t in tokens]


def _reference_weights(row: torch.Tensor, temperature: float, min_p: float) -> np.ndarray:
    """Unnormalised float64 probabilities of one row (its maximum's is 1), min_p applied."""
    x = row.double().numpy()
    with np.errstate(invalid="ignore"):
        weights = np.exp((x - x.max()) / np.float64(np.float32(temperature)))
    weights[np.isneginf(x)] = 0.0
    weights[weights < np.float64(np.float32(min_p))] = 0.0
    return weights


def _random_logits(rows: int, vocab: int, seed: int, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=generator(seed)) * scale


def _clear_of_threshold(logits: torch.Tensor, temperature: float, min_p: float) -> torch.Tensor:
    """`logits` with the tokens whose weight lies within 1e-3 of min_p masked (-inf): rounding
    may put those on either side of the threshold, and they would move every interval after
    them."""
    out = logits.clone()
    for r in range(out.shape[0]):
        weights = _reference_weights(out[r], temperature, 0.0)
        near = np.abs(weights / np.float32(min_p) - 1.0) < 1e-3
        out[r, torch.from_numpy(near)] = float("-inf")
    return out


def _middle_uniforms(
    logits: torch.Tensor, temperature: float, min_p: float, per_row: int, seed: int
) -> tuple[list[int], list[int], list[float]]:
    """Rows, expected tokens and uniforms, one of each per case: up to `per_row` tokens of each
    row, among those with probability >= MIN_PROBABILITY, each with the uniform at the middle of
    its interval of the float64 CDF."""
    rng = np.random.default_rng(seed)
    rows, tokens, uniforms = [], [], []
    for r in range(logits.shape[0]):
        weights = _reference_weights(logits[r], temperature, min_p)
        total = weights.sum()
        cdf = np.cumsum(weights)
        eligible = np.flatnonzero(weights / total >= MIN_PROBABILITY)
        picked = rng.choice(eligible, size=min(per_row, eligible.size), replace=False)
        for token in picked:
            rows.append(r)
            tokens.append(int(token))
            uniforms.append(float((cdf[token] - weights[token] / 2) / total))
    return rows, tokens, uniforms


@pytest.mark.parametrize("vocab", VOCAB_SIZES)
@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("min_p", [None, 0.05])
def test_picks_the_token_whose_cdf_interval_holds_the_uniform(
    kernel: SamplingKernel, vocab: int, temperature: float, min_p: float | None
) -> None:
    logits = _random_logits(6, vocab, seed=vocab + int(temperature * 100))
    if min_p is not None:
        logits = _clear_of_threshold(logits, temperature, min_p)
    rows, expected, uniforms = _middle_uniforms(
        logits, temperature, min_p or 0.0, per_row=24, seed=vocab
    )
    got = _sample(kernel, logits[rows], temperature, uniforms, min_p)
    assert got == expected
    if vocab >= 63 and temperature >= 0.7:  # a wide distribution: many different tokens asked
        assert len(set(expected)) > 20


def test_each_row_uses_its_own_temperature_and_min_p(kernel: SamplingKernel) -> None:
    row = _random_logits(1, 1000, seed=3)
    batch, temperatures, min_ps, expected, uniforms = [], [], [], [], []
    for seed, (temperature, min_p) in enumerate([(0.3, 0.0), (1.0, 0.0), (1.0, 0.2), (2.0, 0.01)]):
        clear = _clear_of_threshold(row, temperature, min_p) if min_p else row
        _, tokens, us = _middle_uniforms(clear, temperature, min_p, per_row=10, seed=seed)
        batch += [clear[0]] * len(tokens)
        temperatures += [temperature] * len(tokens)
        min_ps += [min_p] * len(tokens)
        expected += tokens
        uniforms += us
    assert _sample(kernel, torch.stack(batch), temperatures, uniforms, min_ps) == expected


# --- never a zero weight ----------------------------------------------------------------------


def _masked_row(vocab: int, finite: dict[int, float]) -> torch.Tensor:
    row = torch.full((vocab,), float("-inf"))
    for token, logit in finite.items():
        row[token] = logit
    return row


@pytest.mark.parametrize("vocab", [7, 1000, 49152])
def test_masked_tokens_are_never_drawn_even_at_the_extreme_uniforms(
    kernel: SamplingKernel, vocab: int
) -> None:
    # The finite tokens sit in the first, a middle and (for large rows) the last block.
    finite = {1: 0.5, vocab // 2: -1.0, vocab - 2: 2.0} if vocab > 7 else {1: 0.5, 3: -1.0, 5: 2.0}
    row = _masked_row(vocab, finite).unsqueeze(0)
    uniforms = [0.0, 1e-300, 0.25, 0.5, 0.75, 0.999999, LAST_UNIFORM]
    for temperature in (0.5, 1.0, 50.0):
        got = _sample(kernel, row.expand(len(uniforms), -1), temperature, uniforms)
        assert set(got) <= set(finite), f"T={temperature}: {got}"
        assert got[0] == min(finite)  # u = 0: the first token with a weight
        assert got[-1] == max(finite)  # the largest u: the last token with a weight
    # A tiny temperature leaves the maximum alone; the others' weights underflow to 0.
    got = _sample(kernel, row.expand(len(uniforms), -1), 1e-30, uniforms)
    assert got == [max(finite, key=finite.__getitem__)] * len(uniforms)


@pytest.mark.parametrize("vocab", [1, 7, 300, 49152])
def test_a_row_with_one_finite_logit_always_draws_it(kernel: SamplingKernel, vocab: int) -> None:
    uniforms = [0.0, 0.3, 0.9, LAST_UNIFORM]
    for token in sorted({0, vocab // 3, vocab - 1}):
        row = _masked_row(vocab, {token: -12.0}).unsqueeze(0)
        for temperature in (1e-30, 1.0, 1e4):
            got = _sample(kernel, row.expand(len(uniforms), -1), temperature, uniforms)
            assert got == [token] * len(uniforms)


def test_a_row_without_a_finite_logit_gets_its_last_token_as_in_torch(
    kernel: SamplingKernel,
) -> None:
    # Nothing can be drawn; the torch path's NaN weights put the search past the last column.
    row = torch.full((1, 300), float("-inf"))
    assert _sample(kernel, row.expand(3, -1), 1.0, [0.0, 0.5, LAST_UNIFORM]) == [299] * 3


def test_min_p_one_keeps_only_the_maximum(kernel: SamplingKernel) -> None:
    logits = _random_logits(5, 1000, seed=8)
    uniforms = [0.0, 0.5, LAST_UNIFORM]
    for r in range(5):
        row = logits[r : r + 1].expand(len(uniforms), -1)
        got = _sample(kernel, row, 1.0, uniforms, min_p=1.0)
        assert got == [int(logits[r].argmax())] * len(uniforms)


def test_tiny_temperature_splits_between_tied_maxima(kernel: SamplingKernel) -> None:
    # (x - max) / T: the maxima keep weight 1 at any T > 0, the others drop to 0.
    row = torch.tensor([0.0, 3.0, 2.9999998, 3.0, -1.0, float("-inf")]).unsqueeze(0)
    uniforms = [0.0, 0.4999, 0.5001, LAST_UNIFORM]
    got = _sample(kernel, row.expand(len(uniforms), -1), 1e-30, uniforms)
    assert got == [1, 1, 3, 3]


def test_random_masks_and_uniforms_never_draw_a_zero_weight(kernel: SamplingKernel) -> None:
    rows, vocab = 64, 3000
    gen = generator(21)
    logits = torch.randn(rows, vocab, generator=gen) * 4
    keep = torch.rand(rows, vocab, generator=gen) < torch.rand(rows, 1, generator=gen) * 0.02
    keep[torch.arange(rows), torch.randint(vocab, (rows,), generator=gen)] = True
    logits[~keep] = float("-inf")
    uniforms = torch.rand(rows, dtype=torch.float64, generator=gen).tolist()
    uniforms[:4] = [0.0, LAST_UNIFORM, 0.0, LAST_UNIFORM]
    min_p = [0.0 if r % 2 else 0.3 for r in range(rows)]
    got = _sample(kernel, logits, 0.8, uniforms, min_p)
    for r, token in enumerate(got):
        assert bool(keep[r, token]), f"row {r} drew masked token {token}"
        weight = _reference_weights(logits[r], 0.8, 0.0)[token]
        assert weight >= min_p[r] * (1 - 1e-5), f"row {r} drew token {token} below min_p"


def test_rejects_inputs_it_cannot_read(kernel: SamplingKernel) -> None:
    logits = torch.zeros(2, 5)
    temperature = torch.ones(2, 1)
    uniforms = torch.zeros(2, dtype=torch.float64)
    with pytest.raises(KernelError, match="logits"):
        kernel.sample(logits.double(), temperature, None, uniforms)
    with pytest.raises(KernelError, match="logits"):
        kernel.sample(logits.t(), temperature, None, uniforms)
    with pytest.raises(KernelError, match="temperature"):
        kernel.sample(logits, torch.ones(3, 1), None, uniforms)
    with pytest.raises(KernelError, match="min_p"):
        kernel.sample(logits, temperature, torch.zeros(2, 1, dtype=torch.float64), uniforms)
    with pytest.raises(KernelError, match="uniforms"):
        kernel.sample(logits, temperature, None, uniforms.float())


# --- the same tokens in every build and at every thread count -------------------------------


def _wide_batch() -> tuple[torch.Tensor, list[float], list[float], list[float]]:
    """Rows of 49,152 and random uniforms (not kept away from interval edges)."""
    rows = 48
    gen = generator(5)
    logits = torch.randn(rows, 49152, generator=gen) * torch.rand(rows, 1, generator=gen) * 6
    logits[::7, 100:40000] = float("-inf")
    temperature = [(0.3, 1.0, 1.7)[r % 3] for r in range(rows)]
    min_p = [(0.0, 0.0, 0.01, 0.1)[r % 4] for r in range(rows)]
    uniforms = torch.rand(rows, dtype=torch.float64, generator=gen).tolist()
    return logits, temperature, uniforms, min_p


@pytest.mark.parametrize("isa", runnable_isas())
def test_every_variant_chooses_the_tokens_of_the_default_build(
    kernel: SamplingKernel, isa: str
) -> None:
    # The SIMD builds compute the same weights bit for bit; the scalar build's may differ in
    # the last bit (no fused multiply-add), which could only move a uniform within ~1e-7 of an
    # interval's edge: none of these seeded ones.
    logits, temperature, uniforms, min_p = _wide_batch()
    expected = _sample(kernel, logits, temperature, uniforms, min_p)
    assert _sample(_kernel_for(isa), logits, temperature, uniforms, min_p) == expected
    assert len(set(expected)) > 30


@pytest.mark.parametrize("num_threads", [2, 3])
def test_the_thread_count_does_not_change_the_tokens(
    kernel: SamplingKernel, num_threads: int
) -> None:
    logits, temperature, uniforms, min_p = _wide_batch()
    alone = _sample(kernel, logits, temperature, uniforms, min_p, num_threads=1)
    assert _sample(kernel, logits, temperature, uniforms, min_p, num_threads=num_threads) == alone
    # A row's token does not depend on the other rows either.
    assert _sample(kernel, logits[5:6], temperature[5], uniforms[5:6], min_p[5]) == alone[5:6]


@pytest.mark.usefixtures("arm_toolchain")
def test_the_aarch64_build_chooses_the_tokens_of_this_build(
    kernel: SamplingKernel, tmp_path: Path
) -> None:
    # Cross-compiled with the library's flags and run under qemu (test_neon_kernels.py's
    # toolchain). Every AArch64 CPU has NEON and fused multiply-adds, so its scalar variant
    # compiles this file the same way.
    driver = tmp_path / "sampling_driver"
    flags = [flag for flag in library_flags() if flag != "-shared"]
    sources = [str(Path(__file__).parent / "arm" / "sampling_driver.c"), str(CSRC / "sampling.c")]
    built = run_command([CC, *flags, *TARGETS["neon"], f"-I{CSRC}", *sources, "-o", str(driver), "-lm"])
    assert built.returncode == 0, built.stderr[-3000:]
    logits, temperature, uniforms, min_p = _wide_batch()
    inputs = {
        "logits": logits.numpy(),
        "temperature": np.array(temperature, dtype=np.float32),
        "min_p": np.array(min_p, dtype=np.float32),
        "uniforms": np.array(uniforms, dtype=np.float64),
    }
    for name, values in inputs.items():
        values.tofile(tmp_path / name)
    out = tmp_path / "tokens"
    rows, vocab = logits.shape
    ran = run_driver(driver, str(rows), str(vocab), *(str(tmp_path / n) for n in inputs), str(out))
    assert ran.returncode == 0, ran.stderr[-3000:]
    got = np.fromfile(out, dtype=np.int64).tolist()
    assert got == _sample(kernel, logits, temperature, uniforms, min_p)


# --- distribution -----------------------------------------------------------------------------

# Chi-square bound for 11 degrees of freedom at p ~ 1e-5 (seeded: deterministic). Ignoring the
# temperature moves these counts by thousands.
CHI2_BOUND_11 = 45.0


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_draws_follow_the_softmax_at_the_temperature(
    kernel: SamplingKernel, temperature: float
) -> None:
    logits = torch.tensor([2.0, 1.5, 1.0, 0.9, 0.5, 0.0, -0.3, -1.0, -1.5, -2.0, -3.0, 0.2])
    probs = torch.softmax(logits.double() / temperature, dim=0).tolist()
    draws = 30000
    uniforms = torch.rand(draws, dtype=torch.float64, generator=generator(int(temperature * 10)))
    got = _sample(kernel, logits.expand(draws, -1), temperature, uniforms.tolist())
    counts = Counter(got)
    chi_square = sum((counts[i] - draws * p) ** 2 / (draws * p) for i, p in enumerate(probs))
    assert chi_square < CHI2_BOUND_11


# --- greedy argmax ------------------------------------------------------------------------------


@pytest.mark.parametrize("vocab", [1, 7, 63, 64, 65, 1000, 49152])
def test_argmax_equals_torch(kernel: SamplingKernel, vocab: int) -> None:
    logits = _random_logits(9, vocab, seed=vocab)
    assert kernel.argmax(logits).tolist() == logits.argmax(dim=-1).tolist()


def test_argmax_takes_the_first_of_equal_maxima(kernel: SamplingKernel) -> None:
    vocab = 1000
    logits = _random_logits(5, vocab, seed=2)
    ties = [(3, 5, 700), (64, 65, 127), (130, 129 + 64, 999), (0, 999), (998, 999)]
    for row, columns in enumerate(ties):
        logits[row, list(columns)] = 50.0
    assert kernel.argmax(logits).tolist() == [min(columns) for columns in ties]
    assert logits.argmax(dim=-1).tolist() == [min(columns) for columns in ties]


def test_argmax_of_masked_rows_as_in_torch(kernel: SamplingKernel) -> None:
    logits = torch.full((3, 300), float("-inf"))
    logits[1, 250] = -1e30
    logits[2, 77] = 0.0
    logits[2, 200] = 0.0
    assert kernel.argmax(logits).tolist() == logits.argmax(dim=-1).tolist() == [0, 250, 77]


@pytest.mark.parametrize("isa", runnable_isas())
def test_argmax_in_every_variant_and_thread_count(isa: str) -> None:
    logits, _, _, _ = _wide_batch()
    logits[3, [10, 20000]] = 1e4
    expected = logits.argmax(dim=-1).tolist()
    variant = _kernel_for(isa)
    for num_threads in (1, 2, 3):
        assert variant.argmax(logits, num_threads=num_threads).tolist() == expected
    assert expected[3] == 10 and len(set(expected)) > 30


def test_argmax_rejects_inputs_it_cannot_read(kernel: SamplingKernel) -> None:
    with pytest.raises(KernelError):
        kernel.argmax(torch.zeros(2, 8, dtype=torch.float64))
    with pytest.raises(KernelError):
        kernel.argmax(torch.zeros(4, 8)[:, ::2])
    with pytest.raises(KernelError):
        kernel.argmax(torch.zeros(2, 0))


# --- top-k / top-p ----------------------------------------------------------------------------


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
        weights = _reference_weights(logits[r], temperature, min_p)
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
    logits = _random_logits(4, vocab, seed=vocab + int(temperature * 100) + 7)
    if min_p is not None:
        logits = _clear_of_threshold(logits, temperature, min_p)
    for top_k, top_p in TRUNCATIONS:
        k = vocab if top_k is None else top_k
        rows, expected, uniforms, ks, ps = _truncated_cases(
            logits, temperature, min_p or 0.0, k, top_p, seed=vocab + k
        )
        got = _sample_truncated(kernel, logits[rows], temperature, uniforms, ks, ps, min_p)
        assert got == expected, f"top_k={top_k} top_p={top_p}"


def test_truncated_rows_of_one_batch_use_their_own_settings(kernel: SamplingKernel) -> None:
    row = _random_logits(1, 1000, seed=4)
    settings = [  # (temperature, min_p, top_k, top_p)
        (0.7, 0.0, 40, 1.0),
        (1.0, 0.0, 1000, 0.9),
        (1.0, 0.05, 10, 0.8),
        (2.0, 0.0, 2, 1.0),
    ]
    batch, temperatures, min_ps, expected, uniforms, ks, ps = [], [], [], [], [], [], []
    for seed, (temperature, min_p, top_k, top_p) in enumerate(settings):
        clear = _clear_of_threshold(row, temperature, min_p) if min_p else row
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
    logits = _random_logits(5, vocab, seed=vocab)
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
    logits = _random_logits(6, 1000, seed=9)
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
    row = _masked_row(300, {250: 0.0, 7: 0.0, 120: 0.0, 299: 0.0}).unsqueeze(0)
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
        weights = _reference_weights(logits[r], temperature[r], 0.0)
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
    logits = _random_logits(6, vocab, seed=31)
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
    """`_wide_batch` with top-k and top-p settings (random uniforms, not kept from edges)."""
    logits, temperature, uniforms, min_p = _wide_batch()
    rows = logits.shape[0]
    top_k = [(1, 40, 1000, 49152)[r % 4] for r in range(rows)]
    top_p = [(0.9, 1.0, 0.95, 0.5, 0.999)[r % 5] for r in range(rows)]
    return logits, temperature, uniforms, min_p, top_k, top_p


@pytest.mark.parametrize("isa", runnable_isas())
def test_truncated_in_every_variant_and_thread_count(kernel: SamplingKernel, isa: str) -> None:
    logits, temperature, uniforms, min_p, top_k, top_p = _wide_truncated_batch()
    args = (temperature, uniforms, top_k, top_p, min_p)
    expected = _sample_truncated(kernel, logits, *args, num_threads=1)
    variant = _kernel_for(isa)
    for num_threads in (1, 2, 3):
        assert _sample_truncated(variant, logits, *args, num_threads=num_threads) == expected
    assert len(set(expected)) > 30
    # A row's token does not depend on the other rows.
    one = (temperature[6], uniforms[6:7], top_k[6], top_p[6], min_p[6])
    assert _sample_truncated(variant, logits[6:7], *one) == expected[6:7]


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


# --- in the sampler ---------------------------------------------------------------------------


def _seqs(params: list[SamplingParams]) -> list[SequenceState]:
    return [SequenceState("req", [0], p, index=i) for i, p in enumerate(params)]


MIXED_PARAMS = [
    SamplingParams(temperature=1.0, seed=11),
    SamplingParams(temperature=0.0),
    SamplingParams(temperature=0.7, min_p=0.02, seed=12),
    SamplingParams(temperature=1.0, top_k=50, seed=13),
    SamplingParams(temperature=1.3),
    SamplingParams(temperature=0.9, top_p=0.8, min_p=0.01),
    SamplingParams(temperature=1.0, seed=14),
]
TRUNCATED_PARAMS = [
    SamplingParams(temperature=1.0, top_k=50, seed=13),
    SamplingParams(temperature=0.9, top_p=0.8, min_p=0.01),
    SamplingParams(temperature=0.7, top_k=40, top_p=0.9, seed=15),
    SamplingParams(temperature=1.0, top_p=0.95),
]


@pytest.mark.parametrize("sync_free", [False, True])
@pytest.mark.parametrize(
    "params",
    [
        MIXED_PARAMS,
        [p for p in MIXED_PARAMS if p.top_k <= 0 and p.top_p == 1.0],
        TRUNCATED_PARAMS,
    ],
)
def test_the_sampler_chooses_the_torch_paths_tokens_through_the_kernel(
    monkeypatch: pytest.MonkeyPatch, params: list[SamplingParams], sync_free: bool
) -> None:
    # The kernel's exp and torch's differ in the last bit, so a uniform within a rounding of an
    # interval's edge could pick the neighbour; the chance grows with the vocabulary (about
    # 1e-7 of a draw per token), and a small one keeps it negligible on any CPU's torch build.
    vocab = 128
    calls: list[int] = []
    original = SamplingKernel.sample

    def counted(self: SamplingKernel, logits: torch.Tensor, *args: object) -> torch.Tensor:
        calls.append(logits.shape[0])
        return original(self, logits, *args)  # type: ignore[arg-type]

    truncated_calls: list[int] = []
    original_truncated = SamplingKernel.sample_truncated

    def counted_truncated(
        self: SamplingKernel, logits: torch.Tensor, *args: object
    ) -> torch.Tensor:
        truncated_calls.append(logits.shape[0])
        return original_truncated(self, logits, *args)  # type: ignore[arg-type]

    argmax_calls: list[int] = []
    original_argmax = SamplingKernel.argmax

    def counted_argmax(self: SamplingKernel, logits: torch.Tensor) -> torch.Tensor:
        argmax_calls.append(logits.shape[0])
        return original_argmax(self, logits)

    def run(kernels: str) -> list[list[int]]:
        monkeypatch.setenv("ZIGGURAT_CPU_KERNELS", kernels)
        sampler = Sampler(vocab, CPU, seed=3, sync_free=sync_free)
        seqs = _seqs(params)
        tokens = []
        for step in range(6):
            logits = torch.randn(len(seqs), vocab, generator=generator(step)) * 2
            tokens.append([r.token_id for r in sampler(logits, seqs, [EOS])])
        return tokens

    monkeypatch.setattr(SamplingKernel, "sample", counted)
    monkeypatch.setattr(SamplingKernel, "sample_truncated", counted_truncated)
    monkeypatch.setattr(SamplingKernel, "argmax", counted_argmax)
    with_kernel = run("1")
    untruncated = [p for p in params if p.temperature > 0 and p.top_k <= 0 and p.top_p == 1.0]
    assert calls == ([len(untruncated)] * 6 if untruncated else [])
    truncated = [p for p in params if p.temperature > 0 and (p.top_k > 0 or p.top_p < 1.0)]
    assert truncated_calls == ([len(truncated)] * 6 if truncated else [])
    greedy = [p for p in params if p.temperature == 0]
    assert argmax_calls == ([len(greedy)] * 6 if greedy else [])
    assert run("0") == with_kernel
    # The torch path did not call them.
    assert (len(calls), len(truncated_calls)) == (6 * bool(untruncated), 6 * bool(truncated))
    assert len({tuple(step) for step in with_kernel}) == 6  # real random draws
