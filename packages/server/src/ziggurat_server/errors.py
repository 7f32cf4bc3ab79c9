"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}` for every failure."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError as FastAPIValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from ziggurat_core.engine.errors import (
    EngineDeadError,
    ReplicaUnavailableError,
    RequestValidationError,
)
from ziggurat_core.protocol import FIELD_CONTEXT_KEY, ErrorDetail, ErrorResponse

from .wire import ModelResponse

logger = logging.getLogger("ziggurat_server")

REQUEST_ID_HEADER = "X-Request-Id"


class ServerHTTPError(Exception):
    """An error the server answers with: its HTTP status, extra headers and OpenAI's error body.

    Raised anywhere while handling a request; the handlers below turn it into the response. (On
    the other side of the wire the client raises its own `ziggurat.APIError` from that body.)
    """

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        # Every field set, so `param` and `code` go out as null when absent, as OpenAI sends them.
        self.detail = ErrorDetail(message=message, type=error_type, param=param, code=code)
        self.headers = headers or {}

    @property
    def message(self) -> str:
        return self.detail.message

    def body(self) -> ErrorResponse:
        return ErrorResponse(error=self.detail)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ServerHTTPError:
    return ServerHTTPError(400, message, param=param, code=code)


def model_not_found(model: str, served_name: str) -> ServerHTTPError:
    return ServerHTTPError(404, f"The model '{model}' does not exist; this server serves "
                                f"'{served_name}'", param="model", code="model_not_found")


def engine_unavailable(message: str, code: str) -> ServerHTTPError:
    return ServerHTTPError(503, message, error_type="service_unavailable_error", code=code)


def internal_error() -> ServerHTTPError:
    return ServerHTTPError(500, "The server had an error while processing your request.",
                           error_type="server_error", code="internal_error")


def from_engine_error(exc: Exception) -> ServerHTTPError:
    """Map what the engine raises to what a client sees; anything unknown is a generic 500."""
    if isinstance(exc, ServerHTTPError):
        return exc
    if isinstance(exc, RequestValidationError):
        return bad_request(str(exc), param=exc.param)
    if isinstance(exc, ReplicaUnavailableError):
        return engine_unavailable(str(exc), code="replica_unavailable")
    if isinstance(exc, EngineDeadError):
        return engine_unavailable("The engine stopped after an internal error; the server must be "
                                  "restarted.", code="engine_dead")
    return internal_error()


def error_response(error: ServerHTTPError, request_id: str | None = None) -> ModelResponse:
    headers = dict(error.headers)
    if request_id is not None:
        headers[REQUEST_ID_HEADER] = request_id
    return ModelResponse(error.body(), status_code=error.status_code, headers=headers)


def _validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """One readable sentence per pydantic error, naming the field: 'temperature: must be <= 2'."""
    parts: list[str] = []
    first_param: str | None = None
    for error in errors:
        location = [str(item) for item in error.get("loc", ()) if item != "body"]
        # A model-level check names its field in the context (see protocol.field_error).
        context_field = (error.get("ctx") or {}).get(FIELD_CONTEXT_KEY)
        if context_field is not None:
            location = [*location, str(context_field)]
        if error.get("type") == "json_invalid":
            return f"The request body is not valid JSON: {error.get('msg', '')}".rstrip(": "), None
        if error.get("type") == "model_attributes_type" or not location:
            parts.append(f"The request body must be a JSON object ({error.get('msg', 'invalid')})")
            continue
        # Union members add their type name to the location; it reads as noise to a user.
        field = ".".join(item for item in location if not _is_type_tag(item))
        first_param = first_param or field
        parts.append(f"{field}: {error.get('msg', 'invalid value')}")
    unique = list(dict.fromkeys(parts))
    return "; ".join(unique[:5]) or "Invalid request", first_param


def _is_type_tag(item: str) -> bool:
    return item in ("str", "int", "float", "bool", "list[str]", "list[int]", "list[list[int]]") or (
        item.startswith(("list[", "function-", "constrained-"))
    )


async def _handle_server_http_error(request: Request, exc: Exception) -> ModelResponse:
    assert isinstance(exc, ServerHTTPError)
    return error_response(exc, _request_id(request))


async def _handle_engine_validation_error(request: Request, exc: Exception) -> ModelResponse:
    """The engine's typed refusal (e.g. SamplingParams out of range) raised while a route
    builds the request; the same 400 as when the engine refuses it later."""
    assert isinstance(exc, RequestValidationError)
    return error_response(from_engine_error(exc), _request_id(request))


async def _handle_validation_error(request: Request, exc: Exception) -> ModelResponse:
    assert isinstance(exc, FastAPIValidationError)
    message, param = _validation_message(list(exc.errors()))
    return error_response(bad_request(message, param=param), _request_id(request))


async def _handle_http_exception(request: Request, exc: Exception) -> ModelResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        error = ServerHTTPError(404, f"Unknown route: {request.method} {request.url.path}",
                                code="not_found")
    elif exc.status_code == 405:
        error = ServerHTTPError(405, f"Method {request.method} is not allowed on {request.url.path}",
                                code="method_not_allowed")
    else:
        error = ServerHTTPError(exc.status_code, str(exc.detail))
    headers = dict(exc.headers or {})
    headers.update(error.headers)
    error.headers = headers
    return error_response(error, _request_id(request))


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServerHTTPError, _handle_server_http_error)
    app.add_exception_handler(FastAPIValidationError, _handle_validation_error)
    app.add_exception_handler(RequestValidationError, _handle_engine_validation_error)
    app.add_exception_handler(StarletteHTTPException, _handle_http_exception)
