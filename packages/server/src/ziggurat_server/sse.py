"""Server-Sent Events framed as OpenAI sends them: `data: {json}\\n\\n`, ending `data: [DONE]\\n\\n`.

sse-starlette streams the events and watches for the client going away; this module only fixes
the framing OpenAI clients expect and what happens when a stream ends."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import AppStatus
from starlette.types import Receive, Scope, Send
from ziggurat_core.protocol import ResponseModel

# The data of the last event: `data: [DONE]`.
DONE_EVENT = "[DONE]"

# sse-starlette cuts every open stream at once when uvicorn starts shutting down; the server
# instead lets in-flight streams finish within --shutdown-timeout (uvicorn cancels what is left
# when it runs out). The switch is process-wide in the library.
AppStatus.disable_automatic_graceful_drain()


# Characters JSON leaves raw inside strings but `str.splitlines` (and so httpx's `aiter_lines`,
# which many hand-written clients read SSE with) breaks lines at: sent raw, a generated U+2028
# cuts the event in two and the client fails to parse it. Escaped, the JSON means the same.
_SPLITLINES_BREAKS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def sse_event(payload: ResponseModel) -> str:
    """The data of one event: the model's wire JSON (compact, as OpenAI sends it), on one line
    by any reader's definition of a line."""
    return payload.wire_json().translate(_SPLITLINES_BREAKS)


async def _framed(events: AsyncIterator[str | bytes]) -> AsyncIterator[ServerSentEvent]:
    async for data in events:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        yield ServerSentEvent(text, sep="\n")


class SSEResponse(EventSourceResponse):
    """Streams `events`, each the already serialised data of one event (str or bytes). When the
    client disconnects the stream is closed at once (which aborts the engine request), and
    `on_close` always runs, even if the stream never started."""

    def __init__(self, events: AsyncIterator[str | bytes], on_close: Callable[[], Awaitable[None]],
                 headers: dict[str, str] | None = None) -> None:
        self.events = events
        self.on_close = on_close
        # No keep-alive pings (ping=0): OpenAI's stream has none, and a token arrives well
        # within any proxy's idle timeout. `no-cache` rather than the library's `no-store`.
        super().__init__(_framed(events), ping=0, sep="\n",
                         headers={"Cache-Control": "no-cache", **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with contextlib.suppress(Exception):
                await self.events.aclose()  # type: ignore[attr-defined]
            await self.on_close()
