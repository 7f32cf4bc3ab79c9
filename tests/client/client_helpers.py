"""Canned response bodies, trackable streamed bodies and the sent request's JSON for the client
tests."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import respx

BASE = "http://testserver"
API = f"{BASE}/v1"


def sent_json(route: respx.Route) -> Any:
    """The JSON body of the last request `route` received."""
    return json.loads(route.calls.last.request.content)


def chat_completion_body(content: str = "Hello!", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "tiny",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    body.update(overrides)
    return body


def completion_body(text: str = " world", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1_700_000_000,
        "model": "tiny",
        "choices": [{"index": 0, "text": text, "finish_reason": "length"}],
    }
    body.update(overrides)
    return body


def chat_chunk(content: str | None, finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "tiny",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish_reason}],
    }


def sse(*payloads: dict[str, Any] | str) -> bytes:
    """An SSE body: each payload becomes one `data:` event; strings are sent verbatim."""
    parts = []
    for payload in payloads:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        parts.append(f"data: {data}\n\n")
    return "".join(parts).encode()


class TrackedStream(httpx.SyncByteStream):
    """A response body sent in given chunks that records whether it was closed and how far read."""

    def __init__(self, chunks: list[bytes], fail_after: int | None = None) -> None:
        self.chunks = chunks
        self.fail_after = fail_after  # raise a network error after this many chunks
        self.chunks_sent = 0
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            if self.fail_after is not None and self.chunks_sent >= self.fail_after:
                raise httpx.ReadError("connection reset by peer")
            self.chunks_sent += 1
            yield chunk

    def close(self) -> None:
        self.closed = True


class AsyncTrackedStream(httpx.AsyncByteStream):
    def __init__(self, chunks: list[bytes], fail_after: int | None = None) -> None:
        self.chunks = chunks
        self.fail_after = fail_after
        self.chunks_sent = 0
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            if self.fail_after is not None and self.chunks_sent >= self.fail_after:
                raise httpx.ReadError("connection reset by peer")
            self.chunks_sent += 1
            yield chunk

    async def aclose(self) -> None:
        self.closed = True


def split_every(body: bytes, size: int) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]
