"""The prefill allowance beside decodes, measured in time (Sarathi-Serve's token budget derived
from a latency target, computed online). No torch.

A fixed cap of prompt tokens per step (`max_prefill_tokens_while_decoding`) cannot be right
everywhere: the same 64 tokens are several decode steps' worth for a few streams on a small
CPU, a small fraction of a step of many streams, and different again on another CPU or model.
The pacer instead learns, from the steps the engine ran, what a decode-only step costs and what
one charged prefill token adds to a step (`prefill_allowance.charged_prefill_tokens`), and gives each
step beside decodes as much prompt work as keeps it within `1 + max_decode_slowdown` times a
decode-only step of the same batch.

It is the one owner of those estimates: the scheduler asks it for the next step's allowance,
the engine hands it each step's wall time after the step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Weight of the newest step in the running estimates: about the last ten steps count, so the
# estimates follow a change of load within a fraction of a second of steps, while one slow
# step moves them by a tenth of its excess at most.
SMOOTHING = 0.1
# Weight of a decode-only step slower than predicted, against SMOOTHING for one as fast or faster:
# the baseline follows the fast steps and drifts up only slowly. Decode-only steps slower than
# the decodes' own work are mostly steps that shared the cores (in a server, the gaps between
# long prompts, while the next is read and tokenised); learned at full weight they inflated the
# baseline, and the pacer then gave the prompts more than the target allows.
SLOWER_STEP_WEIGHT = SMOOTHING / 8
# A step measured beyond this many times its prediction counts as this many times: a garbage
# collection or another process taking the core is not a property of the step's work, and one
# such step must not shut the prompts out for many steps after it.
OUTLIER_FACTOR = 4.0
# The allowance, in charged tokens, before anything is measured and no static cap bounds it:
# small enough that the first step beside decodes cannot stall them long on any machine.
UNMEASURED_ALLOWANCE = 16
# Decode-only steps the pacer learns the baseline from anew after the engine changed how it runs
# steps (`rebaseline`: its CPU team grew or shrank).
RELEARN_STEPS = 3
# Prior on the spread of decode batch sizes (sequences squared) in the decode-time fit: with a
# batch size that barely varies, the slope stays near 0 and the fit is the mean step time.
_SLOPE_PRIOR = 1.0
# Larger than any step's token budget: an allowance this large is no limit.
_NO_LIMIT = 1 << 30


@dataclass
class _DecodeTimeFit:
    """Decode-only step time as fixed + per-sequence cost: the weights are read once a step
    whatever the batch while attention and sampling grow with it, so a line follows a batch
    that grows or shrinks where one average per step would lag. Exponentially weighted least
    squares over the recent decode-only steps."""

    weight: float = 0.0
    sum_n: float = 0.0
    sum_t: float = 0.0
    sum_nn: float = 0.0
    sum_nt: float = 0.0

    def add(self, num_decodes: int, seconds: float, rate: float = SMOOTHING) -> None:
        """Weighs in a step at `rate` (the weight of the newest step; the older ones keep
        1 - rate of theirs)."""
        keep = 1.0 - rate
        n = float(num_decodes)
        self.weight = keep * self.weight + rate
        self.sum_n = keep * self.sum_n + rate * n
        self.sum_t = keep * self.sum_t + rate * seconds
        self.sum_nn = keep * self.sum_nn + rate * n * n
        self.sum_nt = keep * self.sum_nt + rate * n * seconds

    @property
    def measured(self) -> bool:
        return self.weight > 0.0

    def predict(self, num_decodes: int) -> float:
        mean_n, mean_t = self.sum_n / self.weight, self.sum_t / self.weight
        variance = max(0.0, self.sum_nn / self.weight - mean_n * mean_n)
        covariance = self.sum_nt / self.weight - mean_n * mean_t
        # Never negative (more sequences never make a step cheaper) and never steeper than
        # through the origin (a step of no sequence costs something, not less than nothing).
        slope = min(max(0.0, covariance / (variance + _SLOPE_PRIOR)), mean_t / mean_n)
        return mean_t + slope * (num_decodes - mean_n)


class PrefillPacer:
    """Learns a decode-only step's time and a charged prefill token's cost from the steps the
    engine ran (`observe`) and gives the next step's prefill allowance beside decodes
    (`allowance`): the time by which the step may exceed a decode-only one / the cost of a
    charged token, at least 1 and at most `cap` (None: no static cap).

    The step may take `1 + max_decode_slowdown` times a decode-only step of the batch that the
    decoding sequences and those about to join them (prompts being computed or waiting) will
    make. With none about to join that is `max_decode_slowdown` x the decode-only time. When
    many arrive together, the first few streams' small early steps are not the pace they will
    keep: held to a fraction of those, a burst of requests was let in a few tokens a step while
    most of it waited for its first token."""

    def __init__(self, max_decode_slowdown: float, cap: int | None = None) -> None:
        if not (math.isfinite(max_decode_slowdown) and max_decode_slowdown > 0):
            raise ValueError(f"max_decode_slowdown must be a finite number > 0, got {max_decode_slowdown}")
        if cap is not None and cap < 1:
            raise ValueError(f"a prefill cap must be >= 1 (or None for none), got {cap}")
        self.max_decode_slowdown = max_decode_slowdown
        self.cap = cap
        self._decode_time = _DecodeTimeFit()
        # Seconds beyond the decode-only estimate, and the charged tokens that caused them, both
        # exponentially weighted: their ratio is the cost of one charged token, a fit through the
        # origin in which a step of few tokens (mostly timing noise) weighs little.
        self._extra_seconds = 0.0
        self._extra_tokens = 0.0
        # After `rebaseline`: the decode-only time learned anew (None: not relearning).
        self._relearned: _DecodeTimeFit | None = None
        self._relearn_steps = 0

    @property
    def relearning(self) -> bool:
        """Whether the next steps beside decodes should be decode-only: the baseline is being
        learned anew (`rebaseline`), and only decode-only steps teach it."""
        return self._relearned is not None

    def rebaseline(self) -> None:
        """The engine's steps run differently from now on (its CPU team changed size), so every
        step's time moves by a factor: learn the decode-only time anew from the next
        RELEARN_STEPS decode-only steps, at full weight (the estimate from before is wrong, not
        noisy), and teach the token cost nothing meanwhile (a step's extra time would carry the
        old baseline's error). Then the token cost is scaled by how much the baseline moved:
        both scale alike with the team, and their ratio sets the allowance. Until then the
        allowance keeps its value."""
        if self._decode_time.measured:
            self._relearned, self._relearn_steps = _DecodeTimeFit(), 0

    def allowance(self, num_decodes: int, num_joining: int = 0) -> int | None:
        """Charged prefill tokens the next step may take beside `num_decodes` decodes, with
        `num_joining` more sequences to decode beside them once their prompts are in (None: no
        limit, as when nothing decodes)."""
        if num_decodes < 1:
            return None
        token_cost = self._token_cost()
        if token_cost is None:
            return self.cap if self.cap is not None else UNMEASURED_ALLOWANCE
        if token_cost == 0.0:
            return self.cap  # prompt work costs nothing measurable: only the static cap bounds it
        decode_time = self._decode_time.predict(num_decodes)
        joined_time = self._decode_time.predict(num_decodes + max(0, num_joining))
        target = (1 + self.max_decode_slowdown) * joined_time - decode_time
        # (The relative 1e-9: estimates averaged in floating point land a hair below a whole
        # count they equal, and must not lose that token.)
        allowed = max(1, int(min(target / token_cost * (1 + 1e-9), _NO_LIMIT)))
        return allowed if self.cap is None else min(allowed, self.cap)

    def observe(self, num_decodes: int, charged_prefill_tokens: float, seconds: float) -> None:
        """The wall time of a step the engine ran with `num_decodes` decodes and
        `charged_prefill_tokens` tokens' worth of prompt work. A step of prompts alone says
        nothing about slowing decodes down and is ignored."""
        if num_decodes < 1 or not math.isfinite(seconds) or seconds < 0:
            return
        if self._relearned is not None:
            if charged_prefill_tokens == 0:
                self._relearn(self._relearned, num_decodes, seconds)
            return
        fit = self._decode_time
        if charged_prefill_tokens == 0:
            rate = SMOOTHING
            if fit.measured:
                predicted = fit.predict(num_decodes)
                seconds = min(seconds, OUTLIER_FACTOR * predicted)
                if seconds > predicted:
                    rate = SLOWER_STEP_WEIGHT
            fit.add(num_decodes, seconds, rate)
            return
        if not fit.measured:
            return  # nothing to subtract the decodes' share from yet
        decode_seconds = fit.predict(num_decodes)
        token_cost = self._token_cost()
        if token_cost is not None:
            expected = decode_seconds + token_cost * charged_prefill_tokens
            seconds = min(seconds, OUTLIER_FACTOR * expected)
        keep = 1.0 - SMOOTHING
        self._extra_seconds = keep * self._extra_seconds + SMOOTHING * (seconds - decode_seconds)
        self._extra_tokens = keep * self._extra_tokens + SMOOTHING * charged_prefill_tokens

    def _relearn(self, relearned: _DecodeTimeFit, num_decodes: int, seconds: float) -> None:
        # A fresh fit normalises by its own weight: nearly a plain mean of the few steps.
        relearned.add(num_decodes, seconds)
        self._relearn_steps += 1
        if self._relearn_steps < RELEARN_STEPS:
            return
        mean_decodes = max(1, round(relearned.sum_n / relearned.weight))
        factor = relearned.predict(mean_decodes) / self._decode_time.predict(mean_decodes)
        self._extra_seconds *= factor
        self._decode_time, self._relearned = relearned, None

    def _token_cost(self) -> float | None:
        """Seconds one charged prefill token adds to a step beside decodes (never negative);
        None before a step with both was measured."""
        if self._extra_tokens == 0.0:
            return None
        return max(0.0, self._extra_seconds) / self._extra_tokens
