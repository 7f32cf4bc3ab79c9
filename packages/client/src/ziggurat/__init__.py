"""Ziggurat client SDK: sync and async clients for Ziggurat or any OpenAI-compatible server.

`Client` and `AsyncClient` expose `chat.completions.create`, `completions.create`,
`models.list` / `models.get`, `info()` and `health()`; see docs/client.md for a tour.
"""

from . import types
from ._async_client import AsyncClient
from ._client import Client
from ._exceptions import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    UnprocessableEntityError,
    ZigguratError,
)
from ._sse import ServerSentEvent, SSEDecoder
from ._streaming import AsyncStream, Stream
from ._version import __version__

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APITimeoutError",
    "AsyncClient",
    "AsyncStream",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "ConflictError",
    "InternalServerError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "SSEDecoder",
    "ServerSentEvent",
    "Stream",
    "UnprocessableEntityError",
    "ZigguratError",
    "__version__",
    "types",
]
