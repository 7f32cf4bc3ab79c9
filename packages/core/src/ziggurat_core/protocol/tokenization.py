"""`/tokenize` and `/detokenize` with the served model's tokenizer."""

from __future__ import annotations

from pydantic import Field, JsonValue, model_validator

from ._base import RequestModel, ResponseModel, field_error
from .chat import TEMPLATE_ENDING_RULE, ChatMessage, ChatTemplateFields
from .common import TokenId

# Exactly one of `prompt` and `messages`, said in the schema as well as checked: each branch
# requires its field with a non-null value, so a body giving both matches two branches.
# A prompt takes none of the chat template's options.
_ONE_OF_PROMPT_OR_MESSAGES: list[JsonValue] = [
    {"required": ["prompt"], "properties": {
        "prompt": {"type": "string"}, "add_generation_prompt": {"const": True},
        "continue_final_message": {"const": False}, "chat_template_kwargs": {"type": "null"}}},
    {"required": ["messages"], "properties": {"messages": {"type": "array"}}},
]


class TokenizeRequest(ChatTemplateFields):
    model_config = {**ChatTemplateFields.model_config, "json_schema_extra": {
        **TEMPLATE_ENDING_RULE, "oneOf": _ONE_OF_PROMPT_OR_MESSAGES}}

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    # Default: true for a prompt (the tokenizer's BOS), false for messages (the template writes
    # any BOS the model wants).
    add_special_tokens: bool | None = None

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise field_error("prompt_or_messages", "prompt",
                              "give exactly one of prompt or messages")
        for name, field in ChatTemplateFields.model_fields.items():
            if self.prompt is not None and getattr(self, name) != field.default:
                raise field_error("messages_only", name,
                                  f"{name} applies to messages; this request gives a prompt")
        return self

    def special_tokens_added(self) -> bool:
        return self.add_special_tokens if self.add_special_tokens is not None else (
            self.prompt is not None)


class TokenizeResponse(ResponseModel):
    tokens: list[int]
    count: int
    max_model_len: int | None = None


class DetokenizeRequest(RequestModel):
    model: str | None = None
    tokens: list[TokenId]


class DetokenizeResponse(ResponseModel):
    prompt: str
