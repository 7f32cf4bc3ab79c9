"""`Stream[T]` and `AsyncStream[T]`: typed items from an SSE response, closed whatever happens.

Iteration decodes SSE events with `SSEDecoder`, stops at `[DONE]`, raises `APIError` for an error
event (`event: error` or a `{"error": ...}` payload), and closes the HTTP response when the loop
ends, breaks or raises. Each `iter()` / `aiter()` returns a fresh generator that is not stored, so
a `break` drops the last reference and the generator's cleanup closes the response at once
(sync), or as soon as the event loop finalises it (async; `async with stream:` closes it
deterministically). A stream is never retried once it has yielded: the retry loop ended when the
response headers arrived.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from ._exceptions import (
    APIConnectionError,
    APIResponseValidationError,
    APITimeoutError,
    make_api_error,
    status_from_error_code,
)
from ._sse import ServerSentEvent, SSEDecoder

logger = logging.getLogger("ziggurat")

ItemT = TypeVar("ItemT", bound=BaseModel)

DONE_MARKER = "[DONE]"


def is_done(event: ServerSentEvent) -> bool:
    return event.data.strip() == DONE_MARKER


def parse_event(event: ServerSentEvent, cast_to: type[ItemT], request_id: str | None) -> ItemT:
    """One data event as a model; error events and `{"error": ...}` payloads raise APIError."""
    try:
        payload: Any = json.loads(event.data)
    except ValueError:
        if event.event == "error":
            raise make_api_error(None, event.data, request_id=request_id) from None
        raise APIResponseValidationError(
            f"stream event is not JSON: {event.data[:200]!r}", None, event.data, request_id
        ) from None
    if event.event == "error" or (isinstance(payload, dict) and "error" in payload):
        error = payload.get("error") if isinstance(payload, dict) else None
        code = error.get("code") if isinstance(error, dict) else None
        raise make_api_error(
            status_from_error_code(code),
            payload,
            request_id=request_id,
            default_message="The server reported an error in the stream.",
        )
    try:
        return cast_to.model_validate(payload)
    except ValidationError as exc:
        raise APIResponseValidationError(
            f"stream event is not a {cast_to.__name__}: {exc}", None, payload, request_id
        ) from exc


class _StreamBase(Generic[ItemT]):
    def __init__(self, response: httpx.Response, cast_to: type[ItemT], request_id: str) -> None:
        self.response = response
        self.request_id = request_id
        self._cast_to = cast_to
        self._started = False

    def _start(self) -> None:
        if self._started:
            raise RuntimeError("a stream can be iterated only once")
        self._started = True

    def _parse(self, events: list[ServerSentEvent]) -> tuple[list[ItemT], bool, Exception | None]:
        """The items in `events` up to `[DONE]`, whether `[DONE]` came, and the error an event
        raised (the items before it are still delivered first)."""
        items: list[ItemT] = []
        for event in events:
            if is_done(event):
                return items, True, None
            try:
                items.append(parse_event(event, self._cast_to, self.request_id))
            except Exception as exc:
                return items, False, exc
        return items, False, None

    @contextlib.contextmanager
    def _transport_errors(self) -> Iterator[None]:
        """httpx's transport failures as the SDK's typed errors."""
        try:
            yield
        except httpx.TimeoutException as exc:
            raise APITimeoutError(request_id=self.request_id) from exc
        except httpx.TransportError as exc:
            raise APIConnectionError(
                f"Connection error while streaming: {exc}", request_id=self.request_id
            ) from exc


class Stream(_StreamBase[ItemT]):
    """Iterate with `for item in stream`; use `with stream:` to close it without iterating."""

    def __iter__(self) -> Iterator[ItemT]:
        self._start()
        return self._items()

    def _items(self) -> Iterator[ItemT]:
        decoder = SSEDecoder()
        try:
            with self._transport_errors():
                for chunk in self.response.iter_bytes():
                    items, done, error = self._parse(decoder.feed(chunk))
                    yield from items
                    if error is not None:
                        raise error
                    if done:
                        return
                items, _, error = self._parse(decoder.flush())
                yield from items
                if error is not None:
                    raise error
        finally:
            self.close()

    def close(self) -> None:
        if not self.response.is_closed:
            logger.debug("closing stream request_id=%s", self.request_id)
        self.response.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class AsyncStream(_StreamBase[ItemT]):
    """Iterate with `async for item in stream`; `async with stream:` closes it deterministically."""

    def __aiter__(self) -> AsyncIterator[ItemT]:
        self._start()
        return self._items()

    async def _items(self) -> AsyncIterator[ItemT]:
        decoder = SSEDecoder()
        try:
            with self._transport_errors():
                async for chunk in self.response.aiter_bytes():
                    items, done, error = self._parse(decoder.feed(chunk))
                    for item in items:
                        yield item
                    if error is not None:
                        raise error
                    if done:
                        return
                items, _, error = self._parse(decoder.flush())
                for item in items:
                    yield item
                if error is not None:
                    raise error
        finally:
            await self.close()

    async def close(self) -> None:
        if not self.response.is_closed:
            logger.debug("closing stream request_id=%s", self.request_id)
        await self.response.aclose()

    aclose = close

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
