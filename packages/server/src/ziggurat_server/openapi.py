"""What the OpenAPI document says each route answers, so a client generated from it is right.

Each route declares its statuses with FastAPI's `responses` (built here); every error is
OpenAI's `ErrorResponse`. FastAPI's own 422 is dropped from the document: this server answers
a request that fails validation with a 400 in OpenAI's shape (errors.py), never a 422.

The request models carry their constraints (protocol/), so validation and document agree. The
bounds that depend on the served model, its vocabulary and context window, are written in once
the model has loaded: the request models mark where (`x-token-id`, `x-token-id-keys`,
`x-context-tokens`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from ziggurat_core.protocol import ErrorResponse, ResponseModel

from .unsupported_fields import document_unimplemented_fields

Responses = dict[int | str, dict[str, Any]]

_ERRORS = {
    400: "Invalid request: bad JSON, a wrong type or value (the field is named in `param`), or "
         "a prompt that does not fit the context window.",
    401: "Missing or incorrect API key (`Authorization: Bearer KEY`).",
    404: "Unknown model.",
    413: "The request body is larger than --max-request-bytes.",
    429: "Too many sequences already wait for a decode slot; retry after `Retry-After` seconds.",
    500: "An unexpected server error (never with details).",
    503: "The model is loading or failed to load, the engine stopped, or the server is shutting "
         "down; retry after `Retry-After` seconds where it is given.",
}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying",
                                "schema": {"type": "integer"}}}


def errors(*statuses: int) -> Responses:
    """The error responses a route can give, each with OpenAI's error body."""
    responses: Responses = {}
    for status in statuses:
        response: dict[str, Any] = {"model": ErrorResponse, "description": _ERRORS[status]}
        if status in (429, 503):
            response["headers"] = _RETRY_AFTER
        responses[status] = response
    return responses


def ok(model: type[ResponseModel], *, streamed: type[ResponseModel] | None = None) -> Responses:
    """The success response: `model` as JSON, or (with `stream: true`) Server-Sent Events whose
    data are `streamed` chunks, then `[DONE]`."""
    response: dict[str, Any] = {"model": model, "description": "Success"}
    if streamed is not None:
        response["description"] = (f"A {model.__name__}, or with `stream: true` Server-Sent "
                                   f"Events, each `data: <{streamed.__name__}>`, then "
                                   "`data: [DONE]`; an error after the headers went out is an "
                                   "event whose data is an ErrorResponse.")
        _STREAMED_MODELS[streamed.__name__] = streamed
        response["content"] = {"text/event-stream": {"schema": _event_schema(streamed.__name__)}}
    return {200: response}


# Models that appear only inside event streams: FastAPI does not put them in the components.
_STREAMED_MODELS: dict[str, type[ResponseModel]] = {}
_COMPONENT = "#/components/schemas/{model}"


def _event_schema(chunk_name: str) -> dict[str, Any]:
    """One Server-Sent Event (Open API 3.1: `schema` of text/event-stream describes each event):
    its data is `[DONE]` or JSON, a chunk or an error."""
    json_data = {"contentMediaType": "application/json", "contentSchema": {"anyOf": [
        {"$ref": _COMPONENT.format(model=chunk_name)},
        {"$ref": _COMPONENT.format(model=ErrorResponse.__name__)}]}}
    return {"type": "object", "required": ["data"], "properties": {
        "data": {"type": "string", "anyOf": [{"const": "[DONE]"}, json_data]},
        "event": {"type": "string"}, "id": {"type": "string"}, "retry": {"type": "integer"}}}


def _add_streamed_models(document: dict[str, Any]) -> None:
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name, model in _STREAMED_MODELS.items():
        if name in schemas:
            continue
        schema = model.model_json_schema(ref_template=_COMPONENT, mode="serialization")
        for nested, nested_schema in schema.pop("$defs", {}).items():
            schemas.setdefault(nested, nested_schema)
        schemas[name] = schema


def common_errors(*, needs_key: bool) -> Responses:
    """What any route can answer: 500, and 401 where an API key is required."""
    return errors(401, 500) if needs_key else errors(500)


ModelBounds = tuple[int, int]  # (vocabulary size, context window in tokens)


def install_openapi(app: FastAPI, model_bounds: Callable[[], ModelBounds | None]) -> None:
    """Generate the document as FastAPI does, without the 422s it adds to routes with inputs,
    and with the served model's bounds once `model_bounds` knows them (until then, unbounded)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = generate()
        app.openapi_schema = None  # FastAPI caches what it generated; the copy below is ours
        for operations in document.get("paths", {}).values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        schemas = document.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        _add_streamed_models(document)
        document_unimplemented_fields(schemas)
        bounds = model_bounds()
        if bounds is None:
            return document
        _write_model_bounds(document, vocab_size=bounds[0], max_model_len=bounds[1])
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def _write_model_bounds(node: Any, *, vocab_size: int, max_model_len: int) -> None:
    """Bound every marked schema in `node` by the served model's vocabulary and context."""
    if isinstance(node, list):
        for item in node:
            _write_model_bounds(item, vocab_size=vocab_size, max_model_len=max_model_len)
        return
    if not isinstance(node, dict):
        return
    if node.get("x-token-id"):
        node["maximum"] = vocab_size - 1
    if node.get("x-context-tokens"):
        # The prompt takes at least one position of the window.
        node["maximum"] = max_model_len - 1
    if node.get("x-token-id-keys"):
        (value_schema,) = node["patternProperties"].values()
        node["patternProperties"] = {decimal_range_pattern(vocab_size - 1): value_schema}
    for value in node.values():
        _write_model_bounds(value, vocab_size=vocab_size, max_model_len=max_model_len)


def decimal_range_pattern(largest: int) -> str:
    """A regular expression matching the decimal numbers 0..`largest` (no leading zeros)."""
    digits = str(largest)
    shorter = ["0"] if len(digits) > 1 else []
    if len(digits) > 2:
        shorter.append(f"[1-9][0-9]{{0,{len(digits) - 2}}}")
    elif len(digits) == 2:
        shorter.append("[1-9]")
    # Numbers as long as `largest`: a prefix of it, then one smaller digit, then any digits.
    same_length: list[str] = []
    for position, digit in enumerate(digits):
        lowest = 1 if position == 0 and len(digits) > 1 else 0
        if int(digit) > lowest:
            rest = len(digits) - position - 1
            tail = f"[0-9]{{{rest}}}" if rest else ""
            same_length.append(f"{digits[:position]}[{lowest}-{int(digit) - 1}]{tail}")
    same_length.append(digits)
    return "^(" + "|".join(shorter + same_length) + ")$"
