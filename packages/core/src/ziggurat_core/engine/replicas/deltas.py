"""What a replica sends for each output, and how the set rebuilds the output from it. No Ray, no
torch.

A `RequestOutput` carries the whole request so far (prompt, every token, the text): sending it
whole after each step grows with the output and is pickled again every time. A replica sends an
`OutputDelta` instead: what changed since the previous output of the request (the prompt only
with the first). The set's `OutputAssembler` adds the deltas up into the same `RequestOutput`s
the engine made.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput


@dataclass(frozen=True)
class SampleDelta:
    """One sample's (CompletionOutput's) change since the previous output."""

    index: int
    delta_text: str
    delta_token_ids: list[int]
    delta_logprobs: list[Logprob] | None
    finish_reason: str | None
    stop_reason: str | int | None
    cumulative_logprob: float | None
    captures: list[tuple[str, str]] | None  # None: as in the previous output


@dataclass(frozen=True)
class OutputDelta:
    request_id: str
    samples: list[SampleDelta]
    finished: bool
    metrics: RequestMetrics | None
    num_cached_tokens: int
    # The prompt, in the request's first delta only.
    prompt: str | None = None
    prompt_token_ids: list[int] | None = None


class DeltaEncoder:
    """A replica's side for one request: remembers what it sent already."""

    def __init__(self) -> None:
        self._first = True
        self._captures: dict[int, list[tuple[str, str]]] = {}

    def encode(self, output: RequestOutput) -> OutputDelta:
        samples = []
        for completion in output.outputs:
            captures: list[tuple[str, str]] | None = completion.captures
            if self._captures.get(completion.index, []) == captures:
                captures = None
            else:
                self._captures[completion.index] = completion.captures
            samples.append(SampleDelta(
                index=completion.index, delta_text=completion.delta_text,
                delta_token_ids=completion.delta_token_ids,
                delta_logprobs=completion.delta_logprobs, finish_reason=completion.finish_reason,
                stop_reason=completion.stop_reason,
                cumulative_logprob=completion.cumulative_logprob, captures=captures))
        first, self._first = self._first, False
        return OutputDelta(
            request_id=output.request_id, samples=samples, finished=output.finished,
            metrics=output.metrics, num_cached_tokens=output.num_cached_tokens,
            prompt=output.prompt if first else None,
            prompt_token_ids=output.prompt_token_ids if first else None)


class OutputAssembler:
    """The set's side for one request: the outputs so far, to which each delta adds."""

    def __init__(self) -> None:
        self._prompt: str | None = None
        self._prompt_token_ids: list[int] = []
        self._samples: dict[int, CompletionOutput] = {}

    def apply(self, delta: OutputDelta) -> RequestOutput:
        """The `RequestOutput` the replica's engine made for this delta (new objects each time:
        a consumer may keep the previous ones)."""
        if delta.prompt_token_ids is not None:
            self._prompt, self._prompt_token_ids = delta.prompt, delta.prompt_token_ids
        for change in delta.samples:
            before = self._samples.get(change.index)
            logprobs = before.logprobs if before is not None else None
            if change.delta_logprobs is not None:
                logprobs = [*(logprobs or []), *change.delta_logprobs]
            self._samples[change.index] = CompletionOutput(
                index=change.index,
                text=(before.text if before else "") + change.delta_text,
                token_ids=[*(before.token_ids if before else []), *change.delta_token_ids],
                finish_reason=change.finish_reason, stop_reason=change.stop_reason,
                logprobs=logprobs, cumulative_logprob=change.cumulative_logprob,
                delta_text=change.delta_text, delta_token_ids=change.delta_token_ids,
                delta_logprobs=change.delta_logprobs,
                captures=(change.captures if change.captures is not None
                          else list(before.captures) if before else []))
        return RequestOutput(
            request_id=delta.request_id, prompt=self._prompt,
            prompt_token_ids=self._prompt_token_ids,
            outputs=[self._samples[index] for index in sorted(self._samples)],
            finished=delta.finished, metrics=delta.metrics,
            num_cached_tokens=delta.num_cached_tokens)
