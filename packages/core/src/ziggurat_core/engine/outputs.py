"""What the engine hands back to users. No torch."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TokenLogprob:
    """One token's log probability, with how the token displays and the exact bytes it stands
    for (which may be part of a multi-byte character, so `token` can hold U+FFFD)."""

    token_id: int
    token: str
    token_bytes: bytes
    logprob: float


@dataclass(frozen=True)
class Logprob(TokenLogprob):
    """The sampled token at one position, with the most likely alternatives, most likely first."""

    top_logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    stop_reason: str | int | None = None  # the stop string or token id that ended it
    logprobs: list[Logprob] | None = None
    cumulative_logprob: float | None = None
    # What changed since the previous RequestOutput of this request (for streaming).
    delta_text: str = ""
    delta_token_ids: list[int] = field(default_factory=list)
    delta_logprobs: list[Logprob] | None = None
    # The named captures of a structured-output grammar so far, in the order they closed, as
    # (name, text): how tool calls are read without parsing the text afterwards.
    captures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestMetrics:
    """When a request reached each stage, on `time.monotonic()`'s clock."""

    arrival_time: float
    # The first step that computed any of its tokens: the wait before it is queueing, the time
    # from it to the first token is prompt processing.
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None

    @property
    def time_to_first_token(self) -> float | None:
        if self.first_token_time is None:
            return None
        return self.first_token_time - self.arrival_time

    def tokens_per_second(self, num_output_tokens: int) -> float | None:
        """Decode speed after the first token."""
        if self.first_token_time is None or num_output_tokens < 2:
            return None
        end = self.finished_time if self.finished_time is not None else self.first_token_time
        elapsed = end - self.first_token_time
        return (num_output_tokens - 1) / elapsed if elapsed > 0 else None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics | None = None
    num_cached_tokens: int = 0

    @property
    def time_to_first_token(self) -> float | None:
        return self.metrics.time_to_first_token if self.metrics else None

    @property
    def tokens_per_second(self) -> float | None:
        if self.metrics is None or not self.outputs:
            return None
        return self.metrics.tokens_per_second(max(len(o.token_ids) for o in self.outputs))
