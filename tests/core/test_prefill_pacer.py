"""The prefill pacer (`max_decode_slowdown`) on its own, fed step timings a test writes down:
the allowance it gives follows the slowdown and the measured costs, stays within the static cap
and at least one token, recovers after an outlier, and starts sane."""

from __future__ import annotations

import math

import pytest
from ziggurat_core.engine.config import engine_config
from ziggurat_core.engine.prefill_pacer import UNMEASURED_ALLOWANCE, PrefillPacer


def learn(pacer: PrefillPacer, decodes: int, decode_seconds: float, token_seconds: float,
          steps: int = 40, decode_steps: int = 10) -> list[int]:
    """`decode_steps` decode-only steps of `decode_seconds`, then `steps` steps beside prompt
    work at the allowance the pacer gives, each costing `token_seconds` a charged token on top.
    Returns the allowances it gave."""
    for _ in range(decode_steps):
        pacer.observe(decodes, 0, decode_seconds)
    given = []
    for _ in range(steps):
        allowed = pacer.allowance(decodes)
        assert allowed is not None
        given.append(allowed)
        pacer.observe(decodes, allowed, decode_seconds + token_seconds * allowed)
    return given


def test_the_allowance_is_the_slowdown_of_a_decode_step_in_charged_tokens() -> None:
    # 10 ms decode steps, 1 ms a charged token: a quarter of a step is 2.5 tokens' worth.
    pacer = PrefillPacer(0.25, cap=64)
    learn(pacer, 8, 0.010, 0.001)
    assert pacer.allowance(8) == 2
    # 64 streams, 80 ms a step: the same slowdown buys 20 tokens.
    pacer = PrefillPacer(0.25, cap=64)
    learn(pacer, 64, 0.080, 0.001)
    assert pacer.allowance(64) == 20
    # Twice the slowdown, twice the tokens.
    pacer = PrefillPacer(0.5, cap=64)
    learn(pacer, 64, 0.080, 0.001)
    assert pacer.allowance(64) == 40


def learn_batch_sizes(pacer: PrefillPacer) -> None:
    """Decode steps of 5 ms + 1 ms a sequence over batches of 4 to 16, then steps beside prompt
    work at the allowance given, a charged token 0.1 ms."""
    for i in range(200):
        decodes = 4 + i % 13
        pacer.observe(decodes, 0, 0.005 + 0.001 * decodes)
    for i in range(60):
        decodes = 4 + i % 13
        allowed = pacer.allowance(decodes)
        assert allowed is not None
        pacer.observe(decodes, allowed, 0.005 + 0.001 * decodes + 0.0001 * allowed)


def test_the_decode_time_follows_the_batch_size() -> None:
    pacer = PrefillPacer(1.0)
    learn_batch_sizes(pacer)
    # A whole decode step's worth (slowdown 1.0): 9 ms / 0.1 ms at 4, 13 ms at 8, 21 at 16,
    # within the fit's shrinkage of the slope (which the baseline's lean towards the faster
    # steps compounds at the largest batch: it errs low, never high).
    for decodes, exact in ((4, 90), (8, 130), (16, 210)):
        allowed = pacer.allowance(decodes)
        assert allowed is not None and abs(allowed - exact) <= 0.08 * exact, (decodes, allowed)
        assert allowed <= exact * 1.02, (decodes, allowed)


def test_sequences_about_to_join_buy_the_step_of_the_batch_they_will_make() -> None:
    pacer = PrefillPacer(0.25)
    learn_batch_sizes(pacer)
    alone = pacer.allowance(4)
    assert alone == pacer.allowance(4, 0)
    # 4 streams decoding, 12 more about to join: the step may take 1.25 x the 21 ms step of
    # 16 streams (26.25 ms), 17.25 ms beyond the 9 ms decode step: 172 tokens, where the
    # 4 streams' own step allows 0.25 x 9 ms: 22.
    joined = pacer.allowance(4, 12)
    assert alone is not None and joined is not None
    assert abs(alone - 22) <= 2, alone
    # (The fit's shrunk slope, under-predicting the 16-stream step, errs low, never high.)
    assert 0.8 * 172 <= joined <= 172 * 1.02, joined
    # More to join, more prompt work; none (or a negative count) changes nothing.
    assert alone < pacer.allowance(4, 4) < joined  # type: ignore[operator]
    assert pacer.allowance(4, -3) == alone
    # The static cap still bounds it, and nothing decoding is still no limit.
    capped = PrefillPacer(0.25, cap=64)
    capped.observe(4, 0, 0.009)
    capped.observe(16, 0, 0.021)
    capped.observe(4, 10, 0.010)
    assert capped.allowance(4, 12) == 64
    assert pacer.allowance(0, 12) is None


def test_the_baseline_follows_the_fast_decode_steps() -> None:
    # 8 decodes: every third decode-only step shares the cores and takes 20 ms instead of 10
    # (a server reading and tokenising the next prompt between long prompts). The baseline
    # stays near the 10 ms of the decodes' own work, so the prompts get what a 10 ms step
    # allows (0.25 x 10 ms / 1 ms a token = 2-3), not what the 13.3 ms average would (3-4).
    pacer = PrefillPacer(0.25)
    for i in range(300):
        pacer.observe(8, 0, 0.020 if i % 3 == 2 else 0.010)
    for _ in range(100):
        allowed = pacer.allowance(8)
        assert allowed is not None
        pacer.observe(8, allowed, 0.010 + 0.001 * allowed)
    assert pacer.allowance(8) in (2, 3)


def test_the_static_cap_and_one_token_bound_it() -> None:
    cheap = PrefillPacer(0.25, cap=16)
    assert learn(cheap, 8, 0.010, 0.00001)[-1] == 16  # 250 tokens' worth, capped at 16
    dear = PrefillPacer(0.25, cap=16)
    assert learn(dear, 8, 0.010, 0.5)[-5:] == [1] * 5  # a token costs 50 decode steps: still 1
    uncapped = PrefillPacer(0.25)
    assert learn(uncapped, 8, 0.010, 0.00001)[-1] == 250


def test_it_starts_sane_and_waits_for_measurements() -> None:
    pacer = PrefillPacer(0.25, cap=64)
    assert pacer.allowance(0) is None  # nothing decodes: no limit
    assert pacer.allowance(8) == 64  # nothing measured: the static cap
    assert PrefillPacer(0.25).allowance(8) == UNMEASURED_ALLOWANCE  # no cap: a small start
    # A step with prompt work before any decode-only step has nothing to compare with.
    pacer.observe(8, 64, 0.5)
    assert pacer.allowance(8) == 64
    # Steps of prompts alone say nothing about decodes; a bad clock reading is dropped.
    pacer.observe(0, 0, 0.010)
    pacer.observe(0, 500, 3.0)
    pacer.observe(8, 0, math.nan)
    pacer.observe(8, 0, -1.0)
    assert pacer.allowance(8) == 64
    pacer.observe(8, 0, 0.010)
    assert pacer.allowance(8) == 64  # decode time known, a token's cost not yet
    pacer.observe(8, 10, 0.020)
    assert pacer.allowance(8) == 2  # 10 tokens took 10 ms beyond the decodes


def test_a_token_cost_never_goes_negative() -> None:
    # Steps with prompt work measured faster than decode-only ones (noise): no negative cost,
    # so the allowance is the cap (or no limit), never a negative or absurd count.
    pacer = PrefillPacer(0.25, cap=64)
    for _ in range(10):
        pacer.observe(8, 0, 0.010)
    for _ in range(10):
        pacer.observe(8, 5, 0.008)
    assert pacer.allowance(8) == 64
    uncapped = PrefillPacer(0.25)
    for _ in range(10):
        uncapped.observe(8, 0, 0.010)
    uncapped.observe(8, 5, 0.008)
    assert uncapped.allowance(8) is None
    # Then real costs again: it learns them.
    assert learn(pacer, 8, 0.010, 0.001)[-1] == 2


def test_it_recovers_after_outliers() -> None:
    pacer = PrefillPacer(0.25, cap=64)
    learn(pacer, 8, 0.010, 0.001)
    # One step with prompt work stalls for 5 s (a collection, the core taken away).
    pacer.observe(8, 2, 5.0)
    after = learn(pacer, 8, 0.010, 0.001, steps=40)
    assert after[0] == 1  # it backs off at once
    assert after[-10:] == [2] * 10  # and comes back: the outlier counted as a few steps' worth
    # A decode-only step of 5 s likewise, once the decode-only steps after it outweigh it.
    pacer.observe(8, 0, 5.0)
    assert learn(pacer, 8, 0.010, 0.001, decode_steps=40)[-10:] == [2] * 10


@pytest.mark.parametrize("slowdown, cap", [(0.0, None), (-0.5, None), (math.inf, None),
                                           (math.nan, None), (0.25, 0)])
def test_bad_settings_are_refused(slowdown: float, cap: int | None) -> None:
    with pytest.raises(ValueError):
        PrefillPacer(slowdown, cap)


@pytest.mark.parametrize("value", [-0.25, math.inf, math.nan, True, "0.25"])
def test_the_engine_config_refuses_a_bad_slowdown(value: object) -> None:
    with pytest.raises(ValueError, match="max_decode_slowdown"):
        engine_config(max_decode_slowdown=value)


def test_zero_or_unset_is_no_pacing_and_a_number_is_kept() -> None:
    assert engine_config(max_decode_slowdown=0).max_decode_slowdown == 0
    assert engine_config().max_decode_slowdown is None
    assert engine_config(max_decode_slowdown=2).max_decode_slowdown == 2


def test_after_the_team_changes_the_baseline_is_relearned_and_the_allowance_holds() -> None:
    # 10 ms decode steps, 1 ms a charged token: 2 tokens at a quarter of a step.
    pacer = PrefillPacer(0.25, cap=64)
    learn(pacer, 8, 0.010, 0.001)
    assert pacer.allowance(8) == 2 and not pacer.relearning
    # The team shrinks: every step now takes 1.6 times as long, prompt work included.
    pacer.rebaseline()
    assert pacer.relearning
    # Steps beside prompts teach nothing until the baseline is relearned (their extra time
    # would hold the old baseline's error: 6 ms of it here, 6 tokens' worth).
    for _ in range(20):
        pacer.observe(8, 2, 1.6 * (0.010 + 0.001 * 2))
    assert pacer.allowance(8) == 2 and pacer.relearning
    # Three decode-only steps, each taken at full weight (the damping of slower steps would
    # need dozens), and the baseline is the new one; the token cost moved with it.
    for _ in range(3):
        pacer.observe(8, 0, 0.016)
    assert not pacer.relearning
    assert pacer.allowance(8) == 2
    given = learn(pacer, 8, 0.016, 0.0016, decode_steps=0)
    assert set(given) == {2}  # 0.25 x 16 ms / 1.6 ms = 2.5
    # Without the relearning, the slower decode-only steps barely move the baseline and the
    # prompt work takes the blame: the allowance collapses to the floor.
    stale = PrefillPacer(0.25, cap=64)
    learn(stale, 8, 0.010, 0.001)
    assert learn(stale, 8, 0.016, 0.0016, decode_steps=3)[-1] == 1


def test_a_pacer_that_measured_nothing_has_nothing_to_relearn() -> None:
    pacer = PrefillPacer(0.25, cap=64)
    pacer.rebaseline()
    assert not pacer.relearning and pacer.allowance(8) == 64
