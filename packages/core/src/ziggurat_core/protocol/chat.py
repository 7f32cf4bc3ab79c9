"""`/v1/chat/completions` request, response, stream chunk and tool calls."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ._base import RequestModel, ResponseModel, field_error
from .common import ChatChoiceLogprobs, FinishReason, SamplingFields, Usage


class TextContentPart(RequestModel):
    type: Literal["text"] = "text"
    text: str


class ChatMessage(RequestModel):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[TextContentPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _has_content(self) -> ChatMessage:
        # As OpenAI: only an assistant turn that calls tools may leave its content out.
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            needs = " (or tool_calls)" if self.role == "assistant" else ""
            raise field_error("missing_content", "content",
                              f"a message with role '{self.role}' needs content{needs}; got null or nothing")
        return self

    def text(self) -> str:
        """The content as one string: text parts are joined in order."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def to_template_dict(self) -> dict[str, Any]:
        """The message as a chat template expects it (content flattened to a string)."""
        data: dict[str, Any] = {"role": self.role, "content": self.text()}
        if self.name is not None:
            data["name"] = self.name
        if self.tool_calls is not None:
            data["tool_calls"] = self.tool_calls
        if self.tool_call_id is not None:
            data["tool_call_id"] = self.tool_call_id
        return data


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    add_generation_prompt: bool = True

    @field_validator("messages")
    @classmethod
    def _messages_not_empty(cls, value: list[ChatMessage]) -> list[ChatMessage]:
        if not value:
            raise ValueError("messages must contain at least one message")
        return value

    def effective_max_tokens(self) -> int | None:
        """`max_completion_tokens` is OpenAI's newer name; it wins when both are given."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class FunctionCall(ResponseModel):
    name: str
    arguments: str  # JSON text, as the model wrote it (it may not parse)


class ChatCompletionMessageToolCall(ResponseModel):
    id: str
    type: Literal["function"] | str = "function"
    function: FunctionCall


class ChatCompletionMessage(ResponseModel):
    role: str = "assistant"
    content: str | None = None
    tool_calls: list[ChatCompletionMessageToolCall] | None = None


class ChatCompletionChoice(ResponseModel):
    index: int = 0
    message: ChatCompletionMessage
    logprobs: ChatChoiceLogprobs | None = None
    finish_reason: FinishReason | str | None = None


class ChatCompletion(ResponseModel):
    id: str
    object: Literal["chat.completion"] | str = "chat.completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatCompletionChoice] = Field(default_factory=list)
    usage: Usage | None = None


class ChoiceDeltaFunctionCall(ResponseModel):
    name: str | None = None
    arguments: str | None = None  # the next piece of the arguments' JSON text


class ChoiceDeltaToolCall(ResponseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | str | None = None
    function: ChoiceDeltaFunctionCall | None = None


class ChoiceDelta(ResponseModel):
    role: str | None = None
    content: str | None = None
    tool_calls: list[ChoiceDeltaToolCall] | None = None


class ChatCompletionChunkChoice(ResponseModel):
    index: int = 0
    delta: ChoiceDelta = Field(default_factory=ChoiceDelta)
    logprobs: ChatChoiceLogprobs | None = None
    finish_reason: FinishReason | str | None = None


class ChatCompletionChunk(ResponseModel):
    id: str
    object: Literal["chat.completion.chunk"] | str = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatCompletionChunkChoice] = Field(default_factory=list)
    usage: Usage | None = None
