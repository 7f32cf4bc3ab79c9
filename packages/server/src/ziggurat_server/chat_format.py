"""Chat completion responses and stream chunks, built as the protocol models OpenAI's shapes."""

from __future__ import annotations

from ziggurat_core.engine.outputs import CompletionOutput, Logprob, RequestOutput
from ziggurat_core.protocol import (
    ChatChoiceLogprobs,
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    ChatCompletionMessage,
    ChoiceDelta,
    Usage,
)

from .logprobs import chat_logprobs
from .response_meta import ResponseMeta, usage_of
from .timings import timings_of


def _logprobs_or_none(entries: list[Logprob] | None) -> ChatChoiceLogprobs | None:
    return None if entries is None else chat_logprobs(entries)


def chat_completion_body(meta: ResponseMeta, outputs: list[RequestOutput]) -> ChatCompletion:
    choices = [
        ChatCompletionChoice(
            index=meta.choice_index(prompt_index, completion.index),
            message=ChatCompletionMessage(role="assistant", content=completion.text),
            logprobs=_logprobs_or_none(completion.logprobs),
            finish_reason=completion.finish_reason,
        )
        for prompt_index, output in enumerate(outputs)
        for completion in output.outputs
    ]
    choices.sort(key=lambda choice: choice.index)
    return ChatCompletion(**meta.envelope("chat.completion"), choices=choices,
                          usage=usage_of(outputs), timings=timings_of(outputs))


class ChatChunker:
    """Turns engine outputs into chunks: role first, then content, then finish_reason.

    OpenAI sends `logprobs` and `finish_reason` as explicit nulls in chunks; the deltas carry
    only what changed (fields left unset stay off the wire).
    """

    def __init__(self, meta: ResponseMeta) -> None:
        self.meta = meta
        self._finished: set[int] = set()

    def _chunk(self, index: int, delta: ChoiceDelta, logprobs: ChatChoiceLogprobs | None = None,
               finish_reason: str | None = None) -> ChatCompletionChunk:
        choice = ChatCompletionChunkChoice(index=index, delta=delta, logprobs=logprobs,
                                           finish_reason=finish_reason)
        return ChatCompletionChunk(**self.meta.chunk_envelope("chat.completion.chunk"),
                                   choices=[choice])

    def role_chunks(self, num_choices: int) -> list[ChatCompletionChunk]:
        return [self._chunk(i, ChoiceDelta(role="assistant", content="")) for i in range(num_choices)]

    def output_chunks(self, prompt_index: int, output: RequestOutput) -> list[ChatCompletionChunk]:
        chunks = []
        for completion in output.outputs:
            index = self.meta.choice_index(prompt_index, completion.index)
            chunks.extend(self._completion_chunks(index, completion))
        return chunks

    def _completion_chunks(self, index: int, completion: CompletionOutput) -> list[ChatCompletionChunk]:
        if index in self._finished:
            return []
        chunks = []
        if completion.delta_text or completion.delta_logprobs:
            chunks.append(self._chunk(
                index, ChoiceDelta(content=completion.delta_text),
                _logprobs_or_none(completion.delta_logprobs)))
        if completion.finish_reason is not None:
            self._finished.add(index)
            chunks.append(self._chunk(index, ChoiceDelta(), None, completion.finish_reason))
        return chunks

    def usage_chunk(self, usage: Usage) -> ChatCompletionChunk:
        return ChatCompletionChunk(**self.meta.envelope("chat.completion.chunk"), choices=[],
                                   usage=usage)
