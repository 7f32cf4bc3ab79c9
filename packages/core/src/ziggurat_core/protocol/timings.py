"""`timings`: how long one response took, stage by stage, as the server measured it.

The names shared with llama.cpp's server mean what they mean there: `prompt_n` counts the prompt
tokens the engine computed and `cache_n` those it took from the prefix cache (so the two add up
to `usage.prompt_tokens`), `predicted_n` the tokens generated (`usage.completion_tokens`).
Ziggurat adds `queue_ms`, `ttft_ms` and `total_ms`. A response covers one or more engine requests
(several prompts, `n` samples); it is timed as one job, from its earliest arrival to its last
token, so `queue_ms + prompt_ms == ttft_ms` and `ttft_ms + predicted_ms == total_ms`.
Every field is optional: other servers send fewer, and a rate is None without time to divide by.
"""

from __future__ import annotations

from ._base import ResponseModel


class Timings(ResponseModel):
    # The prompt: tokens computed and the time from the job's first scheduled step to its first
    # generated token.
    prompt_n: int | None = None
    prompt_ms: float | None = None
    prompt_per_token_ms: float | None = None
    prompt_per_second: float | None = None
    # The output: tokens generated (all choices) and the time from the first token to the last;
    # the rates count the tokens after the first, which the prompt's step produced.
    predicted_n: int | None = None
    predicted_ms: float | None = None
    predicted_per_token_ms: float | None = None
    predicted_per_second: float | None = None
    cache_n: int | None = None  # prompt tokens served from the prefix cache
    queue_ms: float | None = None  # arrival to the first scheduled step
    ttft_ms: float | None = None  # arrival to the first generated token
    total_ms: float | None = None  # arrival to the last generated token
