"""`/v1/chat/completions` request, response, stream chunk and tool calls."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field, JsonValue, field_validator, model_validator
from pydantic.config import JsonDict

from ._base import RequestModel, ResponseModel, field_error
from .common import ChatChoiceLogprobs, FinishReason, MaxTokens, SamplingFields, TopLogprobs, Usage
from .structured import StructuredOutputFields
from .timings import Timings
from .tools import (
    ChatCompletionTool,
    FunctionDefinition,
    LegacyFunctionChoice,
    ToolCallParam,
    ToolChoice,
)

# OpenAI's content part types besides "text"; no model Ziggurat serves reads them.
NON_TEXT_PART_TYPES = ("image_url", "input_audio", "file")


class TextContentPart(RequestModel):
    type: Literal["text"] = "text"
    text: str


# As OpenAI: every message needs content, except an assistant turn that calls tools. Said in the
# schema (so a generated client knows) and checked by `_has_content`.
_NOT_NULL: JsonDict = {"not": {"type": "null"}}
_CONTENT_RULE: list[JsonValue] = [
    {"required": ["content"], "properties": {"content": _NOT_NULL}},
    {"required": ["role", "tool_calls"], "properties": {
        "role": {"const": "assistant"}, "tool_calls": {"type": "array", "minItems": 1}}},
]


class ChatMessage(RequestModel):
    model_config = {**RequestModel.model_config, "json_schema_extra": {"anyOf": _CONTENT_RULE}}

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[TextContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallParam] | None = None
    tool_call_id: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts_only(cls, value: Any) -> Any:
        # Named here: the union's own error for an image part would not say what is wrong.
        for part in value if isinstance(value, list) else ():
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in NON_TEXT_PART_TYPES:
                raise ValueError(f"{kind} content parts are not supported: the served model "
                                 "reads text only")
        return value

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
            data["tool_calls"] = [_template_tool_call(call) for call in self.tool_calls]
        if self.tool_call_id is not None:
            data["tool_call_id"] = self.tool_call_id
        return data


def _template_tool_call(call: ToolCallParam) -> dict[str, Any]:
    """Chat templates (Hugging Face's convention) read `arguments` as an object, not JSON text."""
    try:
        arguments: Any = json.loads(call.function.arguments)
    except ValueError:
        arguments = call.function.arguments
    return {"id": call.id, "type": call.type,
            "function": {"name": call.function.name, "arguments": arguments}}


# Variables the server itself gives the chat template; `chat_template_kwargs` may not set them.
RESERVED_TEMPLATE_VARIABLES = ("messages", "tools", "add_generation_prompt",
                               "continue_final_message")


# Said in the schema as well as checked: an open last message needs no new assistant turn.
TEMPLATE_ENDING_RULE: JsonDict = {
    "if": {"required": ["continue_final_message"],
           "properties": {"continue_final_message": {"const": True}}},
    "then": {"required": ["add_generation_prompt"],
             "properties": {"add_generation_prompt": {"const": False}}},
}


class ChatTemplateFields(RequestModel):
    """How the conversation is rendered into a prompt (vLLM's fields): `add_generation_prompt`
    opens the assistant's turn; `continue_final_message` leaves the last message open instead,
    so the model continues it (a prefilled answer); `chat_template_kwargs` are further template
    variables (such as `enable_thinking`), passed through whether or not the template reads them."""

    model_config = {**RequestModel.model_config, "json_schema_extra": TEMPLATE_ENDING_RULE}

    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, JsonValue] | None = Field(default=None, json_schema_extra={
        "propertyNames": {"not": {"enum": list(RESERVED_TEMPLATE_VARIABLES)}}})

    @model_validator(mode="after")
    def _one_way_to_end(self) -> ChatTemplateFields:
        if self.continue_final_message and self.add_generation_prompt:
            raise field_error("conflicting_fields", "continue_final_message",
                              "needs add_generation_prompt set to false: the last message "
                              "cannot stay open under a new assistant turn")
        for name in RESERVED_TEMPLATE_VARIABLES:
            if name in (self.chat_template_kwargs or {}):
                raise field_error("reserved_template_variable", f"chat_template_kwargs.{name}",
                                  "set by the request itself, not through chat_template_kwargs")
        return self


class ChatCompletionRequest(SamplingFields, StructuredOutputFields, ChatTemplateFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: MaxTokens | None = None
    logprobs: bool = False
    top_logprobs: TopLogprobs | None = None
    # As OpenAI: a tools list, when given, names at least one tool.
    tools: list[ChatCompletionTool] | None = Field(default=None, min_length=1)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    functions: list[FunctionDefinition] | None = Field(default=None, min_length=1)  # legacy: tools of type function
    function_call: LegacyFunctionChoice | None = None  # legacy: tool_choice

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
    function_call: FunctionCall | None = None  # legacy `functions` requests get this instead


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
    timings: Timings | None = None
    cached: bool | None = None  # present when the response cache was asked for


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
    function_call: ChoiceDeltaFunctionCall | None = None  # legacy `functions` requests


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
    timings: Timings | None = None
    cached: bool | None = None  # present when the response cache was asked for
