"""Await some work unless an event comes first: the one race the server runs against a client
that leaves and against a shutdown that expires."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def unless_first(work: Awaitable[T], event: Awaitable[None],
                       error: Callable[[], BaseException]) -> T:
    """`work`'s result; if `event` completes first, `work` is cancelled and `error()` raised.
    Whichever is left pending is cancelled and awaited, so nothing outlives the call."""
    work_task: asyncio.Future[T] = asyncio.ensure_future(work)
    event_task: asyncio.Future[None] = asyncio.ensure_future(event)
    both: list[asyncio.Future[Any]] = [work_task, event_task]
    try:
        await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
        if work_task.done():
            return work_task.result()
        raise error()
    finally:
        for task in both:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
