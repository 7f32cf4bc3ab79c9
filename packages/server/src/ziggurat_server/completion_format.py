"""Legacy text completion responses and stream chunks, built as the protocol models."""

from __future__ import annotations

from ziggurat_core.engine.outputs import CompletionOutput, Logprob, RequestOutput
from ziggurat_core.protocol import Completion, CompletionChoice, CompletionLogprobs, Usage

from .logprobs import completion_logprobs
from .response_meta import ResponseMeta, usage_of
from .timings import timings_of


def _logprobs_or_none(entries: list[Logprob] | None, offset: int) -> CompletionLogprobs | None:
    return None if entries is None else completion_logprobs(entries, offset)


def completion_body(meta: ResponseMeta, outputs: list[RequestOutput],
                    echo_texts: list[str] | None) -> Completion:
    """`echo_texts[i]` is prompt i's text when echo was asked for, else None for all."""
    choices: list[CompletionChoice] = []
    for prompt_index, output in enumerate(outputs):
        prefix = echo_texts[prompt_index] if echo_texts is not None else ""
        for completion in output.outputs:
            choices.append(CompletionChoice(
                index=meta.choice_index(prompt_index, completion.index),
                text=prefix + completion.text,
                logprobs=_logprobs_or_none(completion.logprobs, len(prefix)),
                finish_reason=completion.finish_reason,
            ))
    choices.sort(key=lambda choice: choice.index)
    return Completion(**meta.envelope("text_completion"), choices=choices, usage=usage_of(outputs),
                      timings=timings_of(outputs))


class CompletionChunker:
    """Text deltas per choice; the chunk that ends a choice carries its finish_reason."""

    def __init__(self, meta: ResponseMeta) -> None:
        self.meta = meta
        self._finished: set[int] = set()
        self._text_length: dict[int, int] = {}  # characters sent per choice (for text_offset)

    def _chunk(self, index: int, text: str, logprobs: CompletionLogprobs | None,
               finish_reason: str | None) -> Completion:
        choice = CompletionChoice(index=index, text=text, logprobs=logprobs,
                                  finish_reason=finish_reason)
        return Completion(**self.meta.chunk_envelope("text_completion"), choices=[choice])

    def echo_chunks(self, prompt_index: int, prompt_text: str) -> list[Completion]:
        chunks = []
        for sample in range(self.meta.n):
            index = self.meta.choice_index(prompt_index, sample)
            self._text_length[index] = len(prompt_text)
            chunks.append(self._chunk(index, prompt_text, None, None))
        return chunks

    def output_chunks(self, prompt_index: int, output: RequestOutput) -> list[Completion]:
        chunks = []
        for completion in output.outputs:
            index = self.meta.choice_index(prompt_index, completion.index)
            chunk = self._completion_chunk(index, completion)
            if chunk is not None:
                chunks.append(chunk)
        return chunks

    def _completion_chunk(self, index: int, completion: CompletionOutput) -> Completion | None:
        if index in self._finished:
            return None
        if completion.finish_reason is not None:
            self._finished.add(index)
        elif not completion.delta_text and not completion.delta_logprobs:
            return None
        offset = self._text_length.get(index, 0)
        self._text_length[index] = offset + len(completion.delta_text)
        return self._chunk(index, completion.delta_text,
                           _logprobs_or_none(completion.delta_logprobs, offset),
                           completion.finish_reason)

    def usage_chunk(self, usage: Usage) -> Completion:
        return Completion(**self.meta.envelope("text_completion"), choices=[], usage=usage)
