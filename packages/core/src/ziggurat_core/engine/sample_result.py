"""What the sampler returns for one sequence. No torch: the output processor reads it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SampleResult:
    token_id: int
    # Log-probability of the chosen token under the raw logits (before penalties, bias and
    # temperature; after a structured-output grammar's mask, which defines what may be sampled
    # at all); None when the sequence did not ask for logprobs (it is only computed on request).
    logprob: float | None
    # Token id -> such a log-probability: the k most likely tokens when logprobs = k > 0, only the
    # chosen token when logprobs = 0, None when logprobs is None.
    top_logprobs: dict[int, float] | None
