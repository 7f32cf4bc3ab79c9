"""The end of a graceful shutdown: requests still running when --shutdown-timeout expires are
ended by the server, cleanly, before uvicorn cancels what is left.

A request waiting for its first token, or a non-streaming one, gets a 503 with Retry-After; a
stream gets an error event and `[DONE]`. Left to uvicorn, a cancelled request would be a 500
(or a stream cut without a word). The CLI starts the countdown when the signal arrives and
gives uvicorn a little longer than the timeout, so these answers go out first."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from .errors import ServerHTTPError
from .racing import unless_first

T = TypeVar("T")

# A restarted server needs a few seconds to load its model; asking sooner only fails again.
SHUTDOWN_RETRY_AFTER_S = 5
SHUTDOWN_ERROR_CODE = "server_shutting_down"


class ServerShuttingDown(ServerHTTPError):
    """The server ended this request because its shutdown timeout expired."""

    def __init__(self) -> None:
        super().__init__(
            503, "The server is shutting down and ended this request; retry it (on another "
                 "replica or once this one is back).",
            error_type="service_unavailable_error", code=SHUTDOWN_ERROR_CODE,
            headers={"Retry-After": str(SHUTDOWN_RETRY_AFTER_S)})


class ShutdownDrain:
    """When the shutdown timeout expires. Made at start-up on the event loop; `begin` may be
    called from a signal handler."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._expired: asyncio.Event | None = None
        self._begun = False

    def attach(self) -> None:
        """Bind to the running event loop (the app's lifespan start-up)."""
        self._loop = asyncio.get_running_loop()
        self._expired = asyncio.Event()

    @property
    def expired(self) -> bool:
        return self._expired is not None and self._expired.is_set()

    def begin(self) -> None:
        """The shutdown started: in `timeout_s` seconds, end every request still running."""
        loop, expired = self._loop, self._expired
        if self._begun or loop is None or expired is None:
            return
        self._begun = True
        loop.call_soon_threadsafe(loop.call_later, self.timeout_s, expired.set)

    async def wait_expired(self) -> None:
        if self._expired is None:  # never attached: no shutdown to wait for
            await asyncio.Event().wait()
            return
        await self._expired.wait()

    async def unless_expired(self, awaitable: Awaitable[T]) -> T:
        """Await `awaitable`; if the timeout expires first, cancel it and raise ServerShuttingDown."""
        if self.expired:
            raise ServerShuttingDown()
        return await unless_first(awaitable, self.wait_expired(), ServerShuttingDown)
