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
    ChatCompletionMessageToolCall,
    ChoiceDelta,
    ChoiceDeltaFunctionCall,
    ChoiceDeltaToolCall,
    FunctionCall,
    Usage,
)
from ziggurat_core.tools import ToolPlan
from ziggurat_core.tools.parsing import (
    ParsedToolCall,
    ToolCallStreamReader,
    calls_from_captures,
    content_outside_calls,
    finish_reason_with_calls,
)

from .logprobs import chat_logprobs
from .response_meta import ResponseMeta, usage_of
from .timings import timings_of


def _logprobs_or_none(entries: list[Logprob] | None) -> ChatChoiceLogprobs | None:
    return None if entries is None else chat_logprobs(entries)


def _message(plan: ToolPlan, completion: CompletionOutput) -> ChatCompletionMessage:
    """The assistant message: content outside the calls, and the calls read from the captures."""
    if not plan.calls_possible:
        return ChatCompletionMessage(role="assistant", content=completion.text)
    content = content_outside_calls(plan, completion.text)
    calls = calls_from_captures(completion.captures)
    if not calls:
        return ChatCompletionMessage(role="assistant", content=content)
    if plan.legacy:
        first = calls[0]
        return ChatCompletionMessage(role="assistant", content=content,
                                     function_call=FunctionCall(name=first.name,
                                                                arguments=first.arguments))
    return ChatCompletionMessage(role="assistant", content=content, tool_calls=[
        ChatCompletionMessageToolCall(id=call.id, type="function",
                                      function=FunctionCall(name=call.name,
                                                            arguments=call.arguments))
        for call in calls])


def chat_completion_body(meta: ResponseMeta, outputs: list[RequestOutput],
                         plan: ToolPlan) -> ChatCompletion:
    choices = []
    for prompt_index, output in enumerate(outputs):
        for completion in output.outputs:
            calls = calls_from_captures(completion.captures) if plan.calls_possible else []
            choices.append(ChatCompletionChoice(
                index=meta.choice_index(prompt_index, completion.index),
                message=_message(plan, completion),
                logprobs=_logprobs_or_none(completion.logprobs),
                finish_reason=finish_reason_with_calls(plan, completion.finish_reason, calls),
            ))
    choices.sort(key=lambda choice: choice.index)
    return ChatCompletion(**meta.envelope("chat.completion"), choices=choices,
                          usage=usage_of(outputs), timings=timings_of(outputs))


class ChatChunker:
    """Turns engine outputs into chunks: role first, then content, then finish_reason.

    OpenAI sends `logprobs` and `finish_reason` as explicit nulls in chunks; the deltas carry
    only what changed (fields left unset stay off the wire). A tool call goes out once its
    arguments are complete: a delta with its index, id, type and name (arguments ""), then one
    with the arguments, the shape OpenAI's SDK accumulates.
    """

    def __init__(self, meta: ResponseMeta, plan: ToolPlan) -> None:
        self.meta = meta
        self.plan = plan
        self._finished: set[int] = set()
        self._readers: dict[int, ToolCallStreamReader] = {}
        self._calls_sent: dict[int, int] = {}

    def _chunk(self, index: int, delta: ChoiceDelta, logprobs: ChatChoiceLogprobs | None = None,
               finish_reason: str | None = None) -> ChatCompletionChunk:
        choice = ChatCompletionChunkChoice(index=index, delta=delta, logprobs=logprobs,
                                           finish_reason=finish_reason)
        return ChatCompletionChunk(**self.meta.chunk_envelope("chat.completion.chunk"),
                                   choices=[choice])

    def role_chunks(self, num_choices: int) -> list[ChatCompletionChunk]:
        # With tools, content starts as null (as OpenAI sends it): an answer that is only calls
        # then accumulates to content None, as in the non-streamed message.
        content = None if self.plan.calls_possible else ""
        return [self._chunk(i, ChoiceDelta(role="assistant", content=content))
                for i in range(num_choices)]

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
        if self.plan.calls_possible:
            reader = self._readers.setdefault(index, ToolCallStreamReader(self.plan))
            content = reader.content_delta(completion.text, completion.finished)
            calls = reader.new_calls(completion.captures)
        else:
            content, calls = completion.delta_text, []
        if content or completion.delta_logprobs:
            chunks.append(self._chunk(
                index, ChoiceDelta(content=content),
                _logprobs_or_none(completion.delta_logprobs)))
        for call in calls:
            chunks.extend(self._call_chunks(index, call))
        if completion.finish_reason is not None:
            self._finished.add(index)
            finish_reason = finish_reason_with_calls(
                self.plan, completion.finish_reason,
                calls_from_captures(completion.captures) if self.plan.calls_possible else [])
            chunks.append(self._chunk(index, ChoiceDelta(), None, finish_reason))
        return chunks

    def _call_chunks(self, index: int, call: ParsedToolCall) -> list[ChatCompletionChunk]:
        call_index = self._calls_sent.get(index, 0)
        self._calls_sent[index] = call_index + 1
        if self.plan.legacy:
            if call_index > 0:  # a legacy answer holds one function_call
                return []
            return [
                self._chunk(index, ChoiceDelta(
                    function_call=ChoiceDeltaFunctionCall(name=call.name, arguments=""))),
                self._chunk(index, ChoiceDelta(
                    function_call=ChoiceDeltaFunctionCall(arguments=call.arguments))),
            ]
        return [
            self._chunk(index, ChoiceDelta(tool_calls=[ChoiceDeltaToolCall(
                index=call_index, id=call.id, type="function",
                function=ChoiceDeltaFunctionCall(name=call.name, arguments=""))])),
            self._chunk(index, ChoiceDelta(tool_calls=[ChoiceDeltaToolCall(
                index=call_index, function=ChoiceDeltaFunctionCall(arguments=call.arguments))])),
        ]

    def usage_chunk(self, usage: Usage) -> ChatCompletionChunk:
        return ChatCompletionChunk(**self.meta.envelope("chat.completion.chunk"), choices=[],
                                   usage=usage)
