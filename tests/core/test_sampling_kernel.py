"""The temperature-sampling C kernel (csrc/sampling.c, cpu_kernels/sampling.py); its top-k /
top-p variant has test_truncated_sampling_kernel.py.

- It draws by inverse CDF from softmax(logits / T) with min_p: against a float64 reference, a
  uniform placed in the middle of a token's CDF interval (so float32 rounding cannot move it out)
  picks exactly that token, for vocabularies that are not multiples of the block or vector width.
- It never picks a token of zero weight (-inf logits, tokens below min_p), even at u = 0 and at
  the largest uniform below 1, and tiny temperatures do not turn the maximum into NaN.
- The AVX2 and scalar builds, the AArch64 build (cross-compiled, run under qemu) and 1, 2 or 3
  threads choose the tokens of the native build.
- Many draws from one row follow its softmax at the requested temperature.
- The greedy argmax equals torch.argmax (the first of equal maxima, across and within its
  blocks; rows of -inf), in every build (the AArch64 one included) and at every thread count.
- The sampler runs the kernels for every random row on CPU float32 logits, with the same
  uniforms as its torch path: both paths choose the same tokens for the same seeds.
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
from ziggurat_core.engine.cpu_kernels import SamplingKernel
from ziggurat_core.engine.cpu_kernels.build import KernelError
from ziggurat_core.engine.sampler import Sampler
from ziggurat_core.engine.sampling_params import SamplingParams
from ziggurat_core.engine.sequence import SequenceState

pytestmark = pytest.mark.usefixtures("cpu_kernels")

CPU = torch.device("cpu")
EOS = 1
TEMPERATURES = [0.05, 0.7, 1.0, 2.5]


@pytest.fixture(scope="module")
def kernel() -> SamplingKernel:
    """The kernel of the native build, or of the variant ZIGGURAT_CPU_ISA forces."""
    return loaded_kernel()


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





def _middle_uniforms(
    logits: torch.Tensor, temperature: float, min_p: float, per_row: int, seed: int
) -> tuple[list[int], list[int], list[float]]:
    """Rows, expected tokens and uniforms, one of each per case: up to `per_row` tokens of each
    row, among those with probability >= MIN_PROBABILITY, each with the uniform at the middle of
    its interval of the float64 CDF."""
    rng = np.random.default_rng(seed)
    rows, tokens, uniforms = [], [], []
    for r in range(logits.shape[0]):
        weights = reference_weights(logits[r], temperature, min_p)
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
    logits = random_logits(6, vocab, seed=vocab + int(temperature * 100))
    if min_p is not None:
        logits = clear_of_threshold(logits, temperature, min_p)
    rows, expected, uniforms = _middle_uniforms(
        logits, temperature, min_p or 0.0, per_row=24, seed=vocab
    )
    got = _sample(kernel, logits[rows], temperature, uniforms, min_p)
    assert got == expected
    if vocab >= 63 and temperature >= 0.7:  # a wide distribution: many different tokens asked
        assert len(set(expected)) > 20


def test_each_row_uses_its_own_temperature_and_min_p(kernel: SamplingKernel) -> None:
    row = random_logits(1, 1000, seed=3)
    batch, temperatures, min_ps, expected, uniforms = [], [], [], [], []
    for seed, (temperature, min_p) in enumerate([(0.3, 0.0), (1.0, 0.0), (1.0, 0.2), (2.0, 0.01)]):
        clear = clear_of_threshold(row, temperature, min_p) if min_p else row
        _, tokens, us = _middle_uniforms(clear, temperature, min_p, per_row=10, seed=seed)
        batch += [clear[0]] * len(tokens)
        temperatures += [temperature] * len(tokens)
        min_ps += [min_p] * len(tokens)
        expected += tokens
        uniforms += us
    assert _sample(kernel, torch.stack(batch), temperatures, uniforms, min_ps) == expected


# --- never a zero weight ----------------------------------------------------------------------



@pytest.mark.parametrize("vocab", [7, 1000, 49152])
def test_masked_tokens_are_never_drawn_even_at_the_extreme_uniforms(
    kernel: SamplingKernel, vocab: int
) -> None:
    # The finite tokens sit in the first, a middle and (for large rows) the last block.
    finite = {1: 0.5, vocab // 2: -1.0, vocab - 2: 2.0} if vocab > 7 else {1: 0.5, 3: -1.0, 5: 2.0}
    row = masked_row(vocab, finite).unsqueeze(0)
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
        row = masked_row(vocab, {token: -12.0}).unsqueeze(0)
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
    logits = random_logits(5, 1000, seed=8)
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
        weight = reference_weights(logits[r], 0.8, 0.0)[token]
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



@pytest.mark.parametrize("isa", runnable_isas())
def test_every_variant_chooses_the_tokens_of_the_default_build(
    kernel: SamplingKernel, isa: str
) -> None:
    # The SIMD builds compute the same weights bit for bit; the scalar build's may differ in
    # the last bit (no fused multiply-add), which could only move a uniform within ~1e-7 of an
    # interval's edge: none of these seeded ones.
    logits, temperature, uniforms, min_p = wide_batch()
    expected = _sample(kernel, logits, temperature, uniforms, min_p)
    assert _sample(kernel_for(isa), logits, temperature, uniforms, min_p) == expected
    assert len(set(expected)) > 30


@pytest.mark.parametrize("num_threads", [2, 3])
def test_the_thread_count_does_not_change_the_tokens(
    kernel: SamplingKernel, num_threads: int
) -> None:
    logits, temperature, uniforms, min_p = wide_batch()
    alone = _sample(kernel, logits, temperature, uniforms, min_p, num_threads=1)
    assert _sample(kernel, logits, temperature, uniforms, min_p, num_threads=num_threads) == alone
    # A row's token does not depend on the other rows either.
    assert _sample(kernel, logits[5:6], temperature[5], uniforms[5:6], min_p[5]) == alone[5:6]


@pytest.mark.usefixtures("arm_toolchain")
def test_the_aarch64_build_chooses_the_tokens_of_this_build(
    kernel: SamplingKernel, tmp_path: Path
) -> None:
    logits, temperature, uniforms, min_p = wide_batch()
    per_row = [np.array(temperature, dtype=np.float32), np.array(min_p, dtype=np.float32),
               np.array(uniforms, dtype=np.float64)]
    got = aarch64_tokens(tmp_path, "sample", logits, per_row)
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
    logits = random_logits(9, vocab, seed=vocab)
    assert kernel.argmax(logits).tolist() == logits.argmax(dim=-1).tolist()


def test_argmax_takes_the_first_of_equal_maxima(kernel: SamplingKernel) -> None:
    vocab = 1000
    logits = random_logits(5, vocab, seed=2)
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
    logits, _, _, _ = wide_batch()
    logits[3, [10, 20000]] = 1e4
    expected = logits.argmax(dim=-1).tolist()
    variant = kernel_for(isa)
    for num_threads in (1, 2, 3):
        assert variant.argmax(logits, num_threads=num_threads).tolist() == expected
    assert expected[3] == 10 and len(set(expected)) > 30


@pytest.mark.usefixtures("arm_toolchain")
def test_argmax_of_the_aarch64_build_equals_torch(tmp_path: Path) -> None:
    logits, _, _, _ = wide_batch()
    logits[3, [10, 20000]] = 1e4  # equal maxima in different blocks
    logits[4, :] = float("-inf")
    expected = logits.argmax(dim=-1).tolist()
    assert aarch64_tokens(tmp_path, "argmax", logits, []) == expected
    assert (expected[3], expected[4]) == (10, 0)


def test_argmax_rejects_inputs_it_cannot_read(kernel: SamplingKernel) -> None:
    with pytest.raises(KernelError):
        kernel.argmax(torch.zeros(2, 8, dtype=torch.float64))
    with pytest.raises(KernelError):
        kernel.argmax(torch.zeros(4, 8)[:, ::2])
    with pytest.raises(KernelError):
        kernel.argmax(torch.zeros(2, 0))


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
