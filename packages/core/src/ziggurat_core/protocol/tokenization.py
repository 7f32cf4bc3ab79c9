"""`/tokenize` and `/detokenize` with the served model's tokenizer."""

from __future__ import annotations

from pydantic import Field, JsonValue, model_validator

from ._base import RequestModel, ResponseModel, field_error
from .chat import ChatMessage
from .common import TokenId

# Exactly one of `prompt` and `messages`, said in the schema as well as checked: each branch
# requires its field with a non-null value, so a body giving both matches two branches.
_ONE_OF_PROMPT_OR_MESSAGES: list[JsonValue] = [
    {"required": ["prompt"], "properties": {"prompt": {"type": "string"}}},
    {"required": ["messages"], "properties": {"messages": {"type": "array"}}},
]


class TokenizeRequest(RequestModel):
    model_config = {**RequestModel.model_config,
                    "json_schema_extra": {"oneOf": _ONE_OF_PROMPT_OR_MESSAGES}}

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    add_special_tokens: bool = True
    add_generation_prompt: bool = True

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise field_error("prompt_or_messages", "prompt",
                              "give exactly one of prompt or messages")
        return self


class TokenizeResponse(ResponseModel):
    tokens: list[int]
    count: int
    max_model_len: int | None = None


class DetokenizeRequest(RequestModel):
    model: str | None = None
    tokens: list[TokenId]


class DetokenizeResponse(ResponseModel):
    prompt: str
