"""Base models: responses keep unknown fields (newer servers), requests keep vendor extras."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, model_validator
from pydantic_core import PydanticCustomError

# The pydantic error type of a string that cannot be encoded as UTF-8.
INVALID_UTF8 = "string_not_utf8"
# A model-level check about one of the model's fields puts the field's path (below the model's
# own location) in its error context under this key, so the server can name it in `param`.
FIELD_CONTEXT_KEY = "field_path"


def field_error(error_type: str, field: str, message: str) -> PydanticCustomError:
    """A validation error raised by a model validator about `field` (a dotted path)."""
    return PydanticCustomError(error_type, message, {FIELD_CONTEXT_KEY: field})


def _integral_number(value: Any) -> Any:
    # JSON has one number type and JSON Schema's "integer" admits 2.0; strict pydantic would not.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# An integer request field takes a JSON number without a fractional part (2 or 2.0), never a
# boolean or a string, as the schema's "integer" says. Bounds go before INTEGRAL inside one
# Annotated (`Annotated[int, Field(ge=0), INTEGRAL]`): put outside, pydantic writes them into
# the JSON schema as "ge"/"le" instead of "minimum"/"maximum".
INTEGRAL = BeforeValidator(_integral_number)
Integer = Annotated[int, INTEGRAL]


class ResponseModel(BaseModel):
    """A server response: unknown fields are kept so newer servers never break older clients.

    The server sends exactly the fields it set when it built the model: a field set to None goes
    out as `null`, a field left at its default is left out. That is how OpenAI's bodies tell
    "no value" (`"logprobs": null`) from "not part of this message" (a delta without `role`),
    and parsing keeps the distinction: a parsed model's set fields are the ones in the JSON.
    """

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    def wire_json(self) -> str:
        """The body as the server sends it: compact JSON of the fields that were set."""
        return self.model_dump_json(exclude_unset=True)


class RequestModel(BaseModel):
    """A request body: extra fields are allowed (OpenAI clients send vendor extras) but kept.

    Validation is strict, as OpenAI's is: a boolean field takes only `true`/`false`, an integer
    field only integers, a string only strings (a float field still takes an integer, as JSON
    numbers do). Every string in the body, vendor extras and free-form objects included, must
    be encodable as UTF-8: JSON can carry a lone surrogate (`"\\ud800"`), a tokenizer cannot.
    """

    model_config = ConfigDict(extra="allow", protected_namespaces=(), strict=True)

    @model_validator(mode="before")
    @classmethod
    def _text_is_utf8(cls, data: Any) -> Any:
        # Runs on the raw input, before any field: the outermost model sees the whole body, so
        # the path it reports starts at the top. (Nested models repeat the walk on their part.)
        for path, text in _strings(data, ()):
            if not _is_utf8(text):
                field = ".".join(_printable(item) for item in path) or "body"
                raise field_error(INVALID_UTF8, field, "the string cannot be encoded as UTF-8 (it "
                                  "holds a lone surrogate such as \\ud800)")
        return data


def _strings(value: Any, path: tuple[str | int, ...]) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """Every string in a JSON-like value (object keys too) with the path that leads to it."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str):
                yield (*path, key), key
            yield from _strings(item, (*path, key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _strings(item, (*path, index))


def _printable(item: str | int) -> str:
    # An object key can be the bad string itself; name it with its escapes written out.
    text = str(item)
    return text if _is_utf8(text) else text.encode("utf-8", "backslashreplace").decode()


def _is_utf8(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
