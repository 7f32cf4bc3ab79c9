"""Chat completion responses and stream chunks, serialised the way OpenAI sends them."""

from __future__ import annotations

from typing import Any

from ziggurat_core.engine.outputs import CompletionOutput, Logprob, RequestOutput
from ziggurat_core.protocol import Usage

from .logprobs import chat_logprobs
from .response_meta import ResponseMeta, usage_of


def _logprobs_or_none(entries: list[Logprob] | None) -> dict[str, Any] | None:
    if entries is None:
        return None
    return chat_logprobs(entries).model_dump(mode="json")


def chat_completion_body(meta: ResponseMeta, outputs: list[RequestOutput]) -> dict[str, Any]:
    choices: list[dict[str, Any]] = []
    for prompt_index, output in enumerate(outputs):
        for completion in output.outputs:
            choices.append({
                "index": meta.choice_index(prompt_index, completion.index),
                "message": {"role": "assistant", "content": completion.text},
                "logprobs": _logprobs_or_none(completion.logprobs),
                "finish_reason": completion.finish_reason,
            })
    choices.sort(key=lambda choice: int(choice["index"]))
    return {**meta.envelope("chat.completion"), "choices": choices,
            "usage": usage_of(outputs).model_dump(mode="json")}


class ChatChunker:
    """Turns engine outputs into chunk payloads: role first, then content, then finish_reason.

    OpenAI sends `logprobs` and `finish_reason` as explicit nulls in chunks, and `usage: null`
    on every chunk when usage was asked for; the deltas carry only what changed.
    """

    def __init__(self, meta: ResponseMeta) -> None:
        self.meta = meta
        self._finished: set[int] = set()

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        chunk = {**self.meta.envelope("chat.completion.chunk"), "choices": choices}
        if self.meta.include_usage:
            chunk["usage"] = None
        return chunk

    @staticmethod
    def _choice(index: int, delta: dict[str, Any], logprobs: dict[str, Any] | None = None,
                finish_reason: str | None = None) -> dict[str, Any]:
        return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}

    def role_chunks(self, num_choices: int) -> list[dict[str, Any]]:
        return [self._chunk([self._choice(i, {"role": "assistant", "content": ""})])
                for i in range(num_choices)]

    def output_chunks(self, prompt_index: int, output: RequestOutput) -> list[dict[str, Any]]:
        chunks = []
        for completion in output.outputs:
            index = self.meta.choice_index(prompt_index, completion.index)
            chunks.extend(self._completion_chunks(index, completion))
        return chunks

    def _completion_chunks(self, index: int, completion: CompletionOutput) -> list[dict[str, Any]]:
        if index in self._finished:
            return []
        chunks = []
        if completion.delta_text or completion.delta_logprobs:
            chunks.append(self._chunk([self._choice(
                index, {"content": completion.delta_text},
                _logprobs_or_none(completion.delta_logprobs))]))
        if completion.finish_reason is not None:
            self._finished.add(index)
            chunks.append(self._chunk([self._choice(index, {}, None, completion.finish_reason)]))
        return chunks

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        return {**self.meta.envelope("chat.completion.chunk"), "choices": [],
                "usage": usage.model_dump(mode="json")}
