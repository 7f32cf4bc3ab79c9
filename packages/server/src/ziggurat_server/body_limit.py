"""Refuse request bodies over `--max-request-bytes` with a 413, before anything parses them.

A body with a Content-Length is judged by its header and never read. A chunked body (no
length) is read here up to the limit and handed on from memory: the routes read whole bodies
anyway, and counting as the app reads would surface as an error inside FastAPI's body parsing,
too late to answer 413."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ServerHTTPError
from .middleware import send_error


def request_too_large(limit: int) -> ServerHTTPError:
    # `Connection: close`: the rest of an unread body must not be taken for the next request.
    return ServerHTTPError(
        413, f"The request body is larger than this server accepts ({limit} bytes; see "
             "--max-request-bytes).",
        code="request_too_large", headers={"Connection": "close"})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP server refuses such a request before it gets here
    return None


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _content_length(scope)
        if length is not None:
            if length > self.max_bytes:
                await send_error(send, request_too_large(self.max_bytes))
                return
            await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                # The client left mid-body: the app sees the disconnect when it reads.
                await self.app(scope, _replay(None, message, receive), send)
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await send_error(send, request_too_large(self.max_bytes))
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(bytes(body), None, receive), send)


def _replay(body: bytes | None, pending: Message | None, receive: Receive) -> Receive:
    """A `receive` that first hands over the buffered body (or the message that ended reading)
    and then the real channel's messages (a later disconnect)."""
    first: Message | None = pending if body is None else {
        "type": "http.request", "body": body, "more_body": False}

    async def replayed() -> Message:
        nonlocal first
        if first is not None:
            message, first = first, None
            return message
        return await receive()

    return replayed
