"""Server-Sent Events framed as OpenAI sends them: `data: {json}\\n\\n`, ending `data: [DONE]\\n\\n`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from ziggurat_core.protocol import ResponseModel

from .disconnect import wait_for_disconnect

DONE_EVENT = "data: [DONE]\n\n"


def sse_event(payload: ResponseModel) -> str:
    return f"data: {payload.wire_json()}\n\n"


class SSEResponse(Response):
    """Streams `events`; when the client disconnects the stream is closed at once (which aborts
    the engine request) and `on_close` always runs, even if the stream never started."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[str], on_close: Callable[[], Awaitable[None]],
                 headers: dict[str, str] | None = None) -> None:
        self.events = events
        self.on_close = on_close
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                           **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
            pump = asyncio.ensure_future(self._pump(send))
            watcher = asyncio.ensure_future(wait_for_disconnect(receive))
            try:
                await asyncio.wait({pump, watcher}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (pump, watcher):
                    if not task.done():
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await task
            if pump.done() and not pump.cancelled():
                error = pump.exception()
                if error is not None and not isinstance(error, OSError):
                    raise error
        finally:
            with contextlib.suppress(Exception):
                await self.events.aclose()  # type: ignore[attr-defined]
            await self.on_close()

    async def _pump(self, send: Send) -> None:
        async for event in self.events:
            await send({"type": "http.response.body", "body": event.encode("utf-8"),
                        "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
