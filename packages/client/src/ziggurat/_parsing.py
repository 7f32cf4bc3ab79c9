"""Structured output on the client (no I/O): a pydantic model class as a `response_format`, and
a chat completion whose message carries the parsed object (as the openai SDK's `parse` does)."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel, Field
from ziggurat_core.protocol import ChatCompletion, ChatCompletionChoice, ChatCompletionMessage

ParsedT = TypeVar("ParsedT", bound=BaseModel)


def is_model_class(value: object) -> bool:
    return isinstance(value, type) and issubclass(value, BaseModel)


def response_format_body(value: Any) -> Any:
    """A pydantic model class becomes a strict `json_schema` response_format (its JSON schema,
    named after the class); anything else is sent as given."""
    if not is_model_class(value):
        return value
    return {
        "type": "json_schema",
        "json_schema": {"name": value.__name__, "schema": value.model_json_schema(), "strict": True},
    }


class ParsedChatCompletionMessage(ChatCompletionMessage, Generic[ParsedT]):
    # The content validated as the requested model; None when there is no complete content
    # (the output was cut short: finish_reason "length").
    parsed: ParsedT | None = None


class ParsedChatCompletionChoice(ChatCompletionChoice, Generic[ParsedT]):
    message: ParsedChatCompletionMessage[ParsedT]


class ParsedChatCompletion(ChatCompletion, Generic[ParsedT]):
    choices: list[ParsedChatCompletionChoice[ParsedT]] = Field(default_factory=list)  # type: ignore[assignment]


def parse_chat_completion(
    completion: ChatCompletion, response_format: type[ParsedT]
) -> ParsedChatCompletion[ParsedT]:
    """`completion` with each choice's content parsed as `response_format`. Content that does
    not validate raises pydantic's ValidationError (the server ignored the schema)."""
    choices = []
    for choice in completion.choices:
        parsed = None
        if choice.message.content is not None and choice.finish_reason == "stop":
            parsed = response_format.model_validate_json(choice.message.content)
        message = ParsedChatCompletionMessage[response_format](  # type: ignore[valid-type]
            **choice.message.model_dump(exclude_unset=True), parsed=parsed)
        choices.append(ParsedChatCompletionChoice[response_format](  # type: ignore[valid-type]
            **choice.model_dump(exclude_unset=True, exclude={"message"}), message=message))
    fields = completion.model_dump(exclude_unset=True, exclude={"choices"})
    return ParsedChatCompletion[response_format](**fields, choices=choices)  # type: ignore[valid-type]
