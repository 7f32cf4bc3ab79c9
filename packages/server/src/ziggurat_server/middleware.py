"""One pure-ASGI middleware for what every request needs: an id, auth, status metrics, and a
generic 500 that never leaks a stack trace. Pure ASGI (not BaseHTTPMiddleware) so streaming
responses and client disconnects pass through untouched."""

from __future__ import annotations

import hmac
import logging
import re
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ServerHTTPError, internal_error
from .metrics import ServerMetrics

logger = logging.getLogger("ziggurat_server")

OPEN_PATHS = frozenset({"/health"})
_CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def new_request_id() -> str:
    return uuid.uuid4().hex


def _client_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1").strip()
            # Echo only ids that are safe in a header and a log line; otherwise make a new one.
            return text if _CLIENT_ID_RE.match(text) else None
    return None


def _bearer_token(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


def api_key_matches(given: str | None, expected: str) -> bool:
    # compare_digest on bytes keeps the comparison constant-time and accepts any characters.
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


async def send_error(send: Send, error: ServerHTTPError) -> None:
    """Answer with `error`'s OpenAI-shaped body, from a middleware (outside FastAPI's handlers)."""
    body = error.body().wire_json().encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: ServerMetrics, api_key: str | None) -> None:
        self.app = app
        self.metrics = metrics
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _client_request_id(scope) or new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        started = False
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal started, status
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            if self._needs_key(scope) and not api_key_matches(_bearer_token(scope), self.api_key or ""):
                await send_error(send_with_id, ServerHTTPError(
                    401, "Missing or incorrect API key. Send 'Authorization: Bearer <key>'.",
                    code="invalid_api_key",
                    # RFC 9110: a 401 names the scheme the client should authenticate with.
                    headers={"WWW-Authenticate": "Bearer"}))
                return
            await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception("unhandled error in request %s", request_id)
            if not started:
                await send_error(send_with_id, internal_error())
            # Once the response started there is nothing more to say: the connection closes.
        finally:
            self._count(scope, status)

    def _needs_key(self, scope: Scope) -> bool:
        return self.api_key is not None and scope["path"] not in OPEN_PATHS

    def _count(self, scope: Scope, status: int) -> None:
        route: Any = scope.get("route")
        label = getattr(route, "path", None) or "unmatched"
        self.metrics.http_requests.labels(label, str(status)).inc()
