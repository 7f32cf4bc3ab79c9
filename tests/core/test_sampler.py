"""Sampler behaviour on hand-built logits with known distributions."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from ziggurat_core.engine.sampler import Sampler, SampleResult, apply_logit_processors
from ziggurat_core.engine.sampling_metadata import build_sampling_metadata
from ziggurat_core.engine.sampling_params import SamplingParams
from ziggurat_core.engine.sequence import SequenceState

CPU = torch.device("cpu")
EOS = 1


def make_seq(
    params: SamplingParams,
    prompt: list[int] | None = None,
    output: list[int] | None = None,
    index: int = 0,
) -> SequenceState:
    seq = SequenceState("req", prompt if prompt is not None else [0], params, index=index)
    for token in output or []:
        seq.append_token(token)
    return seq


def logits_of(probs: list[float], offset: float = 3.0) -> torch.Tensor:
    """Logits whose softmax is `probs` (an offset checks nothing assumes normalised logits)."""
    return torch.tensor([math.log(p) + offset for p in probs], dtype=torch.float32)


def sample_many(
    sampler: Sampler, row: torch.Tensor, params: SamplingParams, draws: int, batch: int = 2000
) -> Counter[int]:
    """Token counts over `draws` samples of one distribution, taken `batch` rows at a time."""
    counts: Counter[int] = Counter()
    while draws > 0:
        size = min(batch, draws)
        seqs = [make_seq(params) for _ in range(size)]
        results = sampler(row.expand(size, -1).contiguous(), seqs, [EOS])
        counts.update(r.token_id for r in results)
        draws -= size
    return counts


def chi_square(counts: Counter[int], probs: list[float]) -> float:
    total = sum(counts.values())
    return sum((counts[i] - total * p) ** 2 / (total * p) for i, p in enumerate(probs) if p > 0)


def normalised(weights: list[float]) -> list[float]:
    total = sum(weights)
    return [w / total for w in weights]


@pytest.fixture
def sampler() -> Sampler:
    return Sampler(vocab_size=4, device=CPU, seed=1234)


# A 4-token distribution used by the statistical tests.
P4 = [0.5, 0.3, 0.15, 0.05]


def test_greedy_picks_the_argmax_of_each_row() -> None:
    sampler = Sampler(vocab_size=8, device=CPU, seed=0)
    logits = torch.zeros(3, 8)
    logits[0, 5] = 2.0
    logits[1, 0] = -0.5
    logits[1, 1:] = -1.0
    logits[2, 7] = 0.1
    seqs = [make_seq(SamplingParams(temperature=0.0)) for _ in range(3)]
    assert [r.token_id for r in sampler(logits, seqs, [EOS])] == [5, 0, 7]


def test_top_k_1_is_greedy_even_at_temperature_1() -> None:
    sampler = Sampler(vocab_size=64, device=CPU, seed=0)
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(16, 64, generator=generator) * 0.1  # nearly flat: sampling would vary
    expected = [int(torch.argmax(row)) for row in logits]
    for _ in range(5):
        seqs = [make_seq(SamplingParams(temperature=1.0, top_k=1)) for _ in range(16)]
        assert [r.token_id for r in sampler(logits, seqs, [EOS])] == expected


def test_greedy_rows_stay_argmax_in_a_mixed_batch() -> None:
    sampler = Sampler(vocab_size=32, device=CPU, seed=0)
    logits = torch.randn(6, 32, generator=torch.Generator().manual_seed(1))
    params = [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=1.0, seed=3),
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=0.7, top_p=0.9),
        SamplingParams(temperature=1.0, top_k=1),
        SamplingParams(temperature=1.2, min_p=0.1),
    ]
    results = sampler(logits, [make_seq(p) for p in params], [EOS])
    for row in (0, 2, 4):
        assert results[row].token_id == int(torch.argmax(logits[row]))
    assert all(0 <= r.token_id < 32 for r in results)


# --- reproducibility -------------------------------------------------------------------------

SEEDED_VARIANTS = [
    SamplingParams(temperature=1.0, seed=42),
    SamplingParams(temperature=0.9, top_p=0.95, top_k=700, seed=42),
    SamplingParams(temperature=1.1, min_p=0.05, seed=42),
    SamplingParams(temperature=1.0, top_p=0.5, seed=42),  # ~300-token nucleus: full-sort path
]


def flat_logits(vocab_size: int, seed: int) -> torch.Tensor:
    return torch.randn(vocab_size, generator=torch.Generator().manual_seed(seed)) * 0.5


def run_steps(
    sampler: Sampler, target: SequenceState, target_row: torch.Tensor, others: list[SequenceState], steps: int
) -> list[int]:
    """Tokens drawn for `target` when it sits at row 2 (or alone) of a batch with `others`."""
    vocab_size = target_row.shape[0]
    tokens = []
    for step in range(steps):
        seqs = others[:2] + [target] + others[2:]
        rows = [flat_logits(vocab_size, 1000 + 10 * step + i) for i in range(len(seqs))]
        rows[seqs.index(target)] = target_row
        results = sampler(torch.stack(rows), seqs, [EOS])
        token = results[seqs.index(target)].token_id
        target.append_token(token)
        tokens.append(token)
    return tokens


@pytest.mark.parametrize("params", SEEDED_VARIANTS)
def test_seeded_sample_does_not_depend_on_the_batch(params: SamplingParams) -> None:
    vocab_size = 1000
    row = flat_logits(vocab_size, 7)
    alone = run_steps(Sampler(vocab_size, CPU, seed=1), make_seq(params), row, [], steps=12)
    others = [
        make_seq(SamplingParams(temperature=1.0)),
        make_seq(SamplingParams(temperature=0.8, seed=5)),
        make_seq(SamplingParams(temperature=0.0)),
        make_seq(SamplingParams(temperature=1.0, top_p=0.5, seed=42, n=2), index=1),
        make_seq(SamplingParams(temperature=1.0, top_k=600)),
    ]
    in_batch = run_steps(Sampler(vocab_size, CPU, seed=99), make_seq(params), row, others, steps=12)
    assert in_batch == alone
    assert len(set(alone)) > 3  # the distribution is wide: these are real random draws


def test_seeded_sample_k_does_not_depend_on_n() -> None:
    vocab_size = 1000
    row = flat_logits(vocab_size, 11)

    def draws(n: int) -> list[list[int]]:
        sampler = Sampler(vocab_size, CPU)
        seqs = [make_seq(SamplingParams(n=n, temperature=1.0, seed=7), index=i) for i in range(n)]
        tokens: list[list[int]] = [[] for _ in range(n)]
        for _ in range(10):
            for i, result in enumerate(sampler(row.expand(n, -1).contiguous(), seqs, [EOS])):
                tokens[i].append(result.token_id)
        return tokens

    single, triple = draws(1), draws(3)
    assert triple[0] == single[0]
    assert triple[1] != triple[0] and triple[2] != triple[0] and triple[1] != triple[2]


def test_different_seeds_give_different_samples() -> None:
    vocab_size = 1000
    row = flat_logits(vocab_size, 13)
    by_seed = {}
    for seed in (1, 2):
        sampler = Sampler(vocab_size, CPU)
        seq = make_seq(SamplingParams(temperature=1.0, seed=seed))
        by_seed[seed] = [sampler(row.unsqueeze(0), [seq], [EOS])[0].token_id for _ in range(10)]
    assert by_seed[1] != by_seed[2]


def test_unseeded_samples_follow_the_sampler_seed() -> None:
    vocab_size = 500
    logits = torch.stack([flat_logits(vocab_size, s) for s in range(8)])

    def draw(seed: int) -> list[int]:
        seqs = [make_seq(SamplingParams(temperature=1.0)) for _ in range(8)]
        return [r.token_id for r in Sampler(vocab_size, CPU, seed=seed)(logits, seqs, [EOS])]

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)


# --- distributions ---------------------------------------------------------------------------

# Chi-square bound for <= 3 degrees of freedom at p ~ 1e-5; the draws are seeded, so the tests
# are deterministic, and a sampler that skews any probability by a few percent fails them.
CHI2_BOUND = 25.0


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_sampling_frequencies(sampler: Sampler, temperature: float) -> None:
    counts = sample_many(sampler, logits_of(P4), SamplingParams(temperature=temperature), 20000)
    expected = normalised([p ** (1.0 / temperature) for p in P4])
    assert chi_square(counts, expected) < CHI2_BOUND


def test_top_p_never_samples_outside_the_nucleus(sampler: Sampler) -> None:
    # Nucleus for 0.75: token 0 (0.5 before it is 0 < 0.75), token 1 (0.5 < 0.75); token 2 has
    # 0.8 before it.
    counts = sample_many(sampler, logits_of(P4), SamplingParams(temperature=1.0, top_p=0.75), 10000)
    assert set(counts) == {0, 1}
    assert chi_square(counts, normalised([0.5, 0.3])) < CHI2_BOUND


def test_top_k_keeps_the_k_most_likely(sampler: Sampler) -> None:
    counts = sample_many(sampler, logits_of(P4), SamplingParams(temperature=1.0, top_k=2), 10000)
    assert set(counts) == {0, 1}
    assert chi_square(counts, normalised([0.5, 0.3])) < CHI2_BOUND


def test_top_p_applies_to_the_distribution_left_by_top_k(sampler: Sampler) -> None:
    # After top_k=3 the mass before token 2 is 0.8/0.95 = 0.84 >= 0.82, so it is dropped; on the
    # untruncated distribution (0.8 < 0.82) it would be kept.
    params = SamplingParams(temperature=1.0, top_k=3, top_p=0.82)
    counts = sample_many(sampler, logits_of(P4), params, 10000)
    assert set(counts) == {0, 1}


# (vocab size, near-equal tokens, top_p, a rank some sample must pass): nuclei of ~380, ~380 and
# ~8000 tokens, so the 256- and 4096-token candidate sets do not hold them.
WIDE_NUCLEI = [(2000, 1000, 0.5, 256), (10000, 1000, 0.5, 256), (10000, 9000, 0.9, 4096)]


@pytest.mark.parametrize(("vocab_size", "num_flat", "top_p", "must_pass"), WIDE_NUCLEI)
def test_top_p_with_a_nucleus_wider_than_the_candidates(
    vocab_size: int, num_flat: int, top_p: float, must_pass: int
) -> None:
    logits = torch.full((vocab_size,), -30.0)
    logits[:num_flat] = -(0.38 / num_flat) * torch.arange(num_flat, dtype=torch.float32)
    probs = torch.softmax(logits.double(), dim=0).tolist()
    nucleus, mass_before = set(), 0.0
    for token, p in enumerate(probs):  # tokens are already in descending order
        if mass_before >= top_p:
            break
        nucleus.add(token)
        mass_before += p
    sampler = Sampler(vocab_size, CPU, seed=5)
    counts = sample_many(sampler, logits, SamplingParams(temperature=1.0, top_p=top_p), 1000)
    assert set(counts) <= nucleus
    assert max(counts) > must_pass


@pytest.mark.parametrize(("vocab_size", "top_k"), [(1000, 300), (5000, 300), (6000, 4500)])
def test_top_k_larger_than_the_first_candidates(vocab_size: int, top_k: int) -> None:
    # Nearly flat and in descending order: token i is the i-th likeliest.
    logits = -(0.2 / vocab_size) * torch.arange(vocab_size, dtype=torch.float32)
    sampler = Sampler(vocab_size, CPU, seed=8)
    counts = sample_many(sampler, logits, SamplingParams(temperature=1.0, top_k=top_k), 1000)
    assert max(counts) < top_k
    assert max(counts) > top_k * 0.9


def test_min_p_drops_tokens_below_the_scaled_threshold(sampler: Sampler) -> None:
    # Threshold 0.2 * 0.5 = 0.1 removes only the 0.05 token.
    counts = sample_many(sampler, logits_of(P4), SamplingParams(temperature=1.0, min_p=0.2), 10000)
    assert set(counts) == {0, 1, 2}
    assert chi_square(counts, normalised([0.5, 0.3, 0.15])) < CHI2_BOUND
    # Threshold 0.35 keeps only the most likely token.
    strict = sample_many(sampler, logits_of(P4), SamplingParams(temperature=1.0, min_p=0.7), 2000)
    assert set(strict) == {0}


# --- logit processors ------------------------------------------------------------------------

def processed_logits(row: list[float], seq: SequenceState, eos: list[int]) -> list[float]:
    logits = torch.tensor([row])
    meta = build_sampling_metadata([seq], eos, len(row), CPU, lambda s: None)
    return apply_logit_processors(logits, meta)[0].tolist()


def test_penalties_follow_the_formulas() -> None:
    row = [2.0, -1.0, 0.5, 3.0, -2.0, 0.9]
    params = SamplingParams(
        temperature=0.0, repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25
    )
    seq = make_seq(params, prompt=[0, 1], output=[3, 3, 4])
    expected = [
        2.0 / 2.0,  # in the prompt, positive: divided
        -1.0 * 2.0,  # in the prompt, negative: multiplied
        0.5,  # never seen
        3.0 / 2.0 - 0.5 * 2 - 0.25,  # generated twice
        -2.0 * 2.0 - 0.5 * 1 - 0.25,  # generated once
        0.9,
    ]
    assert processed_logits(row, seq, [EOS]) == pytest.approx(expected)
    # End to end: without penalties the argmax is token 3, with them it is token 0.
    sampler = Sampler(6, CPU, seed=0)
    assert sampler(torch.tensor([row]), [seq], [EOS])[0].token_id == 0


def test_frequency_and_presence_ignore_prompt_tokens() -> None:
    row = [1.0, 1.0, 1.0]
    seq = make_seq(
        SamplingParams(frequency_penalty=1.0, presence_penalty=0.5), prompt=[0, 0, 1], output=[1, 2, 2]
    )
    assert processed_logits(row, seq, [EOS]) == pytest.approx([1.0, 1.0 - 1.0 - 0.5, 1.0 - 2.0 - 0.5])


def test_penalties_of_one_row_leave_other_rows_alone() -> None:
    row = [2.0, -1.0, 1.0]
    seqs = [
        make_seq(SamplingParams(repetition_penalty=2.0), prompt=[0], output=[1]),
        make_seq(SamplingParams(frequency_penalty=1.0), prompt=[0], output=[1]),
        make_seq(SamplingParams(), prompt=[0], output=[1]),
    ]
    meta = build_sampling_metadata(seqs, [EOS], 3, CPU, lambda s: None)
    processed = apply_logit_processors(torch.tensor([row, row, row]), meta).tolist()
    assert processed == [[1.0, -2.0, 1.0], [2.0, -2.0, 1.0], row]


def test_penalties_do_not_modify_the_callers_logits() -> None:
    logits = torch.tensor([[3.0, 1.0, 2.0]])
    before = logits.clone()
    seq = make_seq(SamplingParams(temperature=0.0, repetition_penalty=1.5), prompt=[0], output=[0])
    Sampler(3, CPU)(logits, [seq], [EOS])
    assert torch.equal(logits, before)


def test_logit_bias_forces_a_token() -> None:
    sampler = Sampler(4, CPU, seed=0)
    params = SamplingParams(temperature=1.0, logit_bias={3: 100.0})
    counts = sample_many(sampler, logits_of(P4), params, 500)
    assert set(counts) == {3}
    # A negative bias on the argmax makes greedy take the runner-up.
    greedy = SamplingParams(temperature=0.0, logit_bias={0: -100.0})
    assert sampler(logits_of(P4).unsqueeze(0), [make_seq(greedy)], [EOS])[0].token_id == 1


def test_logit_bias_ignores_out_of_range_ids() -> None:
    seq = make_seq(SamplingParams(logit_bias={-1: 5.0, 4: 5.0, 99: 5.0, 2: 1.5}))
    assert processed_logits([0.0, 0.0, 0.0, 0.0], seq, [EOS]) == [0.0, 0.0, 1.5, 0.0]


def test_min_tokens_masks_eos_and_stop_tokens_until_reached() -> None:
    sampler = Sampler(6, CPU, seed=0)
    row = torch.tensor([[0.0, 5.0, 1.0, 4.0, 2.0, 0.0]])  # EOS (1) first, stop token 3 second
    params = SamplingParams(temperature=0.0, min_tokens=2, stop_token_ids=[3])
    assert sampler(row, [make_seq(params, output=[])], [EOS])[0].token_id == 4
    assert sampler(row, [make_seq(params, output=[0])], [EOS])[0].token_id == 4
    assert sampler(row, [make_seq(params, output=[0, 0])], [EOS])[0].token_id == EOS


def test_min_tokens_keeps_random_samples_off_eos() -> None:
    sampler = Sampler(4, CPU, seed=0)
    params = SamplingParams(temperature=1.0, min_tokens=5)
    counts = sample_many(sampler, logits_of([0.1, 0.6, 0.2, 0.1]), params, 4000)
    assert EOS not in counts
    assert chi_square(counts, normalised([0.1, 0.0, 0.2, 0.1])) < CHI2_BOUND


def test_min_tokens_with_ignore_eos_masks_only_stop_tokens() -> None:
    # ignore_eos means EOS never ends the sequence, so there is nothing to hold back.
    params = SamplingParams(temperature=0.0, min_tokens=3, ignore_eos=True, stop_token_ids=[3])
    seq = make_seq(params)
    processed = processed_logits([0.0, 5.0, 1.0, 4.0], seq, [EOS])
    assert processed == [0.0, 5.0, 1.0, float("-inf")]


# --- logprobs --------------------------------------------------------------------------------

def test_logprobs_are_those_of_the_raw_logits() -> None:
    sampler = Sampler(4, CPU, seed=0)
    # Temperature and penalties change the sampling distribution but not the reported logprobs.
    params = SamplingParams(temperature=0.5, repetition_penalty=1.5, logprobs=2)
    seqs = [make_seq(params, prompt=[0, 2]) for _ in range(200)]
    results = sampler(logits_of(P4).expand(200, -1).contiguous(), seqs, [EOS])
    for result in results:
        assert result.logprob == pytest.approx(math.log(P4[result.token_id]), abs=1e-5)
        assert result.top_logprobs is not None
        assert list(result.top_logprobs) == [0, 1]
        assert result.top_logprobs[0] == pytest.approx(math.log(0.5), abs=1e-5)
        assert result.top_logprobs[1] == pytest.approx(math.log(0.3), abs=1e-5)
    assert len({r.token_id for r in results}) > 1


def test_logprobs_zero_returns_only_the_chosen_token_and_none_skips_them() -> None:
    sampler = Sampler(4, CPU, seed=0)
    seqs = [
        make_seq(SamplingParams(temperature=0.0, logit_bias={2: 10.0}, logprobs=0)),
        make_seq(SamplingParams(temperature=0.0, logprobs=None)),
        make_seq(SamplingParams(temperature=0.0, logprobs=3)),
    ]
    results = sampler(logits_of(P4).expand(3, -1).contiguous(), seqs, [EOS])
    chosen = results[0]
    assert chosen.token_id == 2  # the bias moves the choice but not the reported logprob
    assert chosen.logprob == pytest.approx(math.log(0.15), abs=1e-5)
    assert chosen.top_logprobs == {2: chosen.logprob}
    assert results[1] == SampleResult(token_id=0, logprob=None, top_logprobs=None)
    assert results[2].top_logprobs is not None
    assert list(results[2].top_logprobs) == [0, 1, 2]


def test_rejects_logits_of_the_wrong_shape() -> None:
    sampler = Sampler(4, CPU)
    seqs = [make_seq(SamplingParams())]
    with pytest.raises(ValueError, match="shape"):
        sampler(torch.zeros(1, 5), seqs, [EOS])
    with pytest.raises(ValueError, match="shape"):
        sampler(torch.zeros(2, 4), seqs, [EOS])
