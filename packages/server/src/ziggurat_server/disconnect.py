"""Notice a client that went away, so its engine request can be aborted at once."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

from starlette.types import Receive

from .racing import unless_first

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client closed the connection before the response was complete."""


async def wait_for_disconnect(receive: Receive) -> None:
    """Return when the ASGI server reports `http.disconnect` (the body was already read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def run_unless_disconnected(receive: Receive, awaitable: Awaitable[T]) -> T:
    """Await `awaitable`; if the client disconnects first, cancel it and raise ClientDisconnected."""
    return await unless_first(awaitable, wait_for_disconnect(receive), ClientDisconnected)
