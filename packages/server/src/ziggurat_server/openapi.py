"""What the OpenAPI document says each route answers, so a client generated from it is right.

Each route declares its statuses with FastAPI's `responses` (built here); every error is
OpenAI's `ErrorResponse`. FastAPI's own 422 is dropped from the document: this server answers
a request that fails validation with a 400 in OpenAI's shape (errors.py), never a 422."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from ziggurat_core.protocol import ErrorResponse, ResponseModel

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
                                   "`data: [DONE]`.")
        response["content"] = {"text/event-stream": {"schema": {"type": "string"}}}
    return {200: response}


def common_errors(*, needs_key: bool) -> Responses:
    """What any route can answer: 500, and 401 where an API key is required."""
    return errors(401, 500) if needs_key else errors(500)


def drop_validation_422(app: FastAPI) -> None:
    """Generate the document as FastAPI does, without the 422s it adds to routes with inputs."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()
            for operations in document.get("paths", {}).values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            schemas = document.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
