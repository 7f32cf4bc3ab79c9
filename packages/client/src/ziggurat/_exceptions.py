"""The exception hierarchy and the mapping from an HTTP error (status + body) to a class.

ZigguratError
└── APIError                    message, status_code, body, request_id
    ├── BadRequestError             400
    ├── AuthenticationError         401
    ├── PermissionDeniedError       403
    ├── NotFoundError               404
    ├── ConflictError               409
    ├── UnprocessableEntityError    422
    ├── RateLimitError              429 (retry_after)
    ├── InternalServerError         5xx
    ├── APIResponseValidationError  a success body that is not the expected shape
    └── APIConnectionError          no response at all
        └── APITimeoutError
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

MAX_TEXT_MESSAGE_CHARS = 500


class ZigguratError(Exception):
    """Base class of every exception this package raises."""


class APIError(ZigguratError):
    """A request failed. `message` is the server's own message when it sent one."""

    def __init__(
        self,
        message: str,
        status_code: int | None = None,
        body: Any = None,
        request_id: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        error_type: str | None = None,
        code: str | int | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.body = body
        self.request_id = request_id
        self.headers: dict[str, str] = dict(headers) if headers is not None else {}
        self.type = error_type
        self.code = code
        self.param = param

    def __str__(self) -> str:
        prefix = f"Error code: {self.status_code} - " if self.status_code is not None else ""
        return f"{prefix}{self.message}"


class BadRequestError(APIError):
    """400: the server rejected the request (invalid parameter, prompt too long...)."""


class AuthenticationError(APIError):
    """401: missing or wrong API key."""


class PermissionDeniedError(APIError):
    """403."""


class NotFoundError(APIError):
    """404: unknown model or route."""


class ConflictError(APIError):
    """409."""


class UnprocessableEntityError(APIError):
    """422: the body failed the server's schema validation."""


class RateLimitError(APIError):
    """429. `retry_after` is the server's Retry-After in seconds, when it sent one."""

    def __init__(self, *args: Any, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.retry_after = retry_after


class InternalServerError(APIError):
    """Any 5xx status."""


class APIResponseValidationError(APIError):
    """The server answered with success but the body is not what the endpoint returns."""


class APIConnectionError(APIError):
    """No response: the connection failed, was refused or dropped."""

    def __init__(
        self, message: str = "Connection error.", *, request_id: str | None = None
    ) -> None:
        super().__init__(message, request_id=request_id)


class APITimeoutError(APIConnectionError):
    """The request timed out (connect, read, write or pool)."""

    def __init__(
        self, message: str = "Request timed out.", *, request_id: str | None = None
    ) -> None:
        super().__init__(message, request_id=request_id)


_CLASS_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def error_class_for_status(status_code: int | None) -> type[APIError]:
    if status_code is None:
        return APIError
    if status_code >= 500:
        return InternalServerError
    return _CLASS_BY_STATUS.get(status_code, APIError)


def parse_error_body(content: bytes) -> Any:
    """The body as JSON when it is JSON, else as text (proxies send HTML error pages)."""
    text = content.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def _fastapi_detail_message(detail: Any) -> str:
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, Mapping) and "msg" in item:
                location = ".".join(str(part) for part in item.get("loc", ()))
                parts.append(f"{location}: {item['msg']}" if location else str(item["msg"]))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return json.dumps(detail)


def _error_fields(body: Any) -> tuple[str | None, dict[str, Any]]:
    """(message, the OpenAI `error` object or {}) from the shapes servers use."""
    if isinstance(body, Mapping):
        error = body.get("error")
        if isinstance(error, Mapping):
            message = error.get("message")
            return (str(message) if message is not None else None), dict(error)
        if isinstance(error, str):
            return error, {}
        if "detail" in body:  # FastAPI's HTTPException and validation errors
            return _fastapi_detail_message(body["detail"]), {}
        if isinstance(body.get("message"), str):
            return body["message"], {}
        return None, {}
    if isinstance(body, str) and body.strip():
        return body.strip()[:MAX_TEXT_MESSAGE_CHARS], {}
    return None, {}


def make_api_error(
    status_code: int | None,
    body: Any,
    *,
    request_id: str | None,
    headers: Mapping[str, str] | None = None,
    retry_after: float | None = None,
    default_message: str | None = None,
) -> APIError:
    """The exception for an error response or an error event, keeping the server's message."""
    message, error = _error_fields(body)
    if message is None:
        message = default_message or (
            f"HTTP {status_code}" if status_code is not None else "The server reported an error."
        )
    cls = error_class_for_status(status_code)
    code = error.get("code")
    param = error.get("param")
    error_type = error.get("type")
    common: dict[str, Any] = {
        "headers": headers,
        "error_type": str(error_type) if error_type is not None else None,
        "code": code if isinstance(code, str | int) else None,
        "param": str(param) if param is not None else None,
    }
    if cls is RateLimitError:
        return RateLimitError(
            message, status_code, body, request_id, retry_after=retry_after, **common
        )
    return cls(message, status_code, body, request_id, **common)


def status_from_error_code(code: Any) -> int | None:
    """An error event's `code` as an HTTP status, when it is one (servers often send 500)."""
    if isinstance(code, bool):
        return None
    if isinstance(code, int):
        status = code
    elif isinstance(code, str) and code.isdigit():
        status = int(code)
    else:
        return None
    return status if 400 <= status <= 599 else None
