"""Turns sampled tokens into text and logprobs and decides when a sample stops. No torch.

It never changes a SequenceState: the scheduler appends the token and finishes the sequence
with the status `process_token` returns."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .detokenizer import IncrementalDetokenizer, StopStringMatcher
from .outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput, TokenLogprob
from .sequence import SequenceState, SequenceStatus

if TYPE_CHECKING:
    from .sample_result import SampleResult
    from .tokenizer import Tokenizer


@dataclass
class SampleState:
    """Text, logprobs and the pending delta of one sample (one SequenceState)."""

    seq: SequenceState
    detokenizer: IncrementalDetokenizer
    stop_matcher: StopStringMatcher | None
    text: str = ""
    stop_reason: str | int | None = None  # the stop string or stop token id that ended it
    logprobs: list[Logprob] | None = None
    cumulative_logprob: float = 0.0
    delta_text: str = ""
    delta_token_ids: list[int] = field(default_factory=list)
    delta_logprobs: list[Logprob] | None = None
    # The structured-output grammar's named captures so far (constrained samples only).
    captures: list[tuple[str, str]] = field(default_factory=list)

    def take_delta(self) -> tuple[str, list[int], list[Logprob] | None]:
        delta = (self.delta_text, self.delta_token_ids, self.delta_logprobs)
        self.delta_text, self.delta_token_ids = "", []
        self.delta_logprobs = [] if self.logprobs is not None else None
        return delta


@dataclass
class RequestState:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    samples: list[SampleState]
    metrics: RequestMetrics

    @property
    def finished(self) -> bool:
        return all(sample.seq.is_finished for sample in self.samples)


class OutputProcessor:
    def __init__(self, tokenizer: Tokenizer, eos_token_ids: list[int], max_model_len: int) -> None:
        self.tokenizer = tokenizer
        self.eos_token_ids = set(eos_token_ids)
        self.max_model_len = max_model_len

    def new_sample(self, seq: SequenceState) -> SampleState:
        params = seq.sampling_params
        matcher = StopStringMatcher(params.stop, params.include_stop_str_in_output) if params.stop else None
        detok = IncrementalDetokenizer(self.tokenizer, seq.prompt_token_ids, params.skip_special_tokens)
        want_logprobs = params.logprobs is not None
        return SampleState(
            seq=seq,
            detokenizer=detok,
            stop_matcher=matcher,
            logprobs=[] if want_logprobs else None,
            delta_logprobs=[] if want_logprobs else None,
        )

    def process_token(self, sample: SampleState, result: SampleResult) -> SequenceStatus | None:
        """Turn the token the scheduler just appended to the sample's sequence into text and
        logprobs; return the finished status the sequence must take, or None."""
        seq, params = sample.seq, sample.seq.sampling_params
        token = result.token_id
        if result.logprob is not None:
            sample.cumulative_logprob += result.logprob
        sample.delta_token_ids.append(token)
        if sample.logprobs is not None:
            entry = self._logprob_entry(result)
            sample.logprobs.append(entry)
            assert sample.delta_logprobs is not None
            sample.delta_logprobs.append(entry)

        may_stop = seq.num_output_tokens >= params.min_tokens
        if may_stop and not params.ignore_eos and token in self.eos_token_ids:
            self._finish_text(sample)
            return SequenceStatus.FINISHED_STOPPED
        if may_stop and token in params.stop_token_ids:
            sample.stop_reason = token
            self._finish_text(sample)
            return SequenceStatus.FINISHED_STOPPED

        piece = sample.detokenizer.push(token)
        if sample.stop_matcher is not None and may_stop:
            emitted, matched = sample.stop_matcher.feed(piece)
            self._emit(sample, emitted)
            if matched is not None:
                sample.stop_reason = matched
                return SequenceStatus.FINISHED_STOPPED
        else:
            self._emit(sample, piece)

        reached_max = params.max_tokens is not None and seq.num_output_tokens >= params.max_tokens
        if reached_max or len(seq) >= self.max_model_len:
            self._finish_text(sample)
            return SequenceStatus.FINISHED_LENGTH
        return None

    def finish_without_token(self, sample: SampleState) -> None:
        """The sample ends for a reason outside the sampler (abort, cache exhausted)."""
        self._finish_text(sample)

    def _finish_text(self, sample: SampleState) -> None:
        tail = sample.detokenizer.flush()
        if sample.stop_matcher is not None:
            emitted, matched = sample.stop_matcher.feed(tail)
            if matched is None:
                emitted += sample.stop_matcher.flush()
            tail = emitted
        self._emit(sample, tail)

    @staticmethod
    def _emit(sample: SampleState, text: str) -> None:
        if text:
            sample.text += text
            sample.delta_text += text

    def _logprob_entry(self, result: SampleResult) -> Logprob:
        ranked = sorted((result.top_logprobs or {}).items(), key=lambda item: item[1], reverse=True)
        token_id = result.token_id
        return Logprob(
            token_id=token_id,
            token=self.tokenizer.token_to_text(token_id),
            token_bytes=self.tokenizer.token_bytes(token_id),
            logprob=result.logprob if result.logprob is not None else float("nan"),
            top_logprobs=[
                TokenLogprob(token_id=tid, token=self.tokenizer.token_to_text(tid),
                             token_bytes=self.tokenizer.token_bytes(tid), logprob=logprob)
                for tid, logprob in ranked
            ],
        )

    @staticmethod
    def make_output(state: RequestState) -> RequestOutput:
        outputs = []
        for sample in state.samples:
            delta_text, delta_ids, delta_logprobs = sample.take_delta()
            seq = sample.seq
            outputs.append(
                CompletionOutput(
                    index=seq.index,
                    text=sample.text,
                    token_ids=list(seq.output_token_ids),
                    finish_reason=seq.status.finish_reason,
                    stop_reason=sample.stop_reason,
                    logprobs=list(sample.logprobs) if sample.logprobs is not None else None,
                    cumulative_logprob=sample.cumulative_logprob if sample.logprobs is not None else None,
                    delta_text=delta_text,
                    delta_token_ids=delta_ids,
                    delta_logprobs=delta_logprobs,
                    captures=list(sample.captures),
                )
            )
        finished = state.finished
        if finished and state.metrics.finished_time is None:
            state.metrics.finished_time = time.monotonic()
        return RequestOutput(
            request_id=state.request_id,
            prompt=state.prompt,
            prompt_token_ids=state.prompt_token_ids,
            outputs=outputs,
            finished=finished,
            metrics=state.metrics,
            num_cached_tokens=max((s.seq.num_cached_tokens for s in state.samples), default=0),
        )
