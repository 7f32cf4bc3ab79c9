"""Sync and async streams: typed chunks, [DONE], error events, and closing in every exit path."""

from __future__ import annotations

import anyio
import httpx
import pytest
import respx
from client_helpers import (
    API,
    BASE,
    AsyncTrackedStream,
    TrackedStream,
    chat_chunk,
    completion_body,
    split_every,
    sse,
)
from ziggurat import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APITimeoutError,
    AsyncClient,
    AsyncStream,
    Client,
    InternalServerError,
    Stream,
)
from ziggurat.types import ChatCompletionChunk, Completion

MESSAGES = [{"role": "user", "content": "hi"}]
THREE_CHUNKS = sse(chat_chunk("Hel"), chat_chunk("lo"), chat_chunk(None, "stop"), "[DONE]")


def open_chat_stream(router: respx.MockRouter, body: TrackedStream) -> Stream[ChatCompletionChunk]:
    router.post("/chat/completions").mock(return_value=httpx.Response(200, stream=body))
    return Client(base_url=BASE).chat.completions.create("tiny", MESSAGES, stream=True)


def test_chunks_are_typed_and_stop_at_done() -> None:
    body = TrackedStream(split_every(THREE_CHUNKS + sse(chat_chunk("after done")), 5))
    with respx.mock(base_url=API) as router:
        router.post("/chat/completions").mock(return_value=httpx.Response(200, stream=body))
        stream = Client(base_url=BASE).chat.completions.create("tiny", MESSAGES, stream=True)
        chunks = list(stream)
    assert all(isinstance(chunk, ChatCompletionChunk) for chunk in chunks)
    assert [chunk.choices[0].delta.content for chunk in chunks] == ["Hel", "lo", None]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert body.closed
    assert stream.request_id.startswith("req_")


def test_completion_stream_yields_completion_chunks() -> None:
    body = sse(completion_body(" a"), completion_body(" b"), "[DONE]")
    with respx.mock(base_url=API) as router:
        router.post("/completions").respond(200, content=body)
        chunks = list(Client(base_url=BASE).completions.create("tiny", "x", stream=True))
    assert all(isinstance(chunk, Completion) for chunk in chunks)
    assert [chunk.choices[0].text for chunk in chunks] == [" a", " b"]


def test_break_closes_the_response_immediately() -> None:
    body = TrackedStream([THREE_CHUNKS])
    with respx.mock(base_url=API) as router:
        stream = open_chat_stream(router, body)
        for _chunk in stream:
            break
        assert body.closed
        assert stream.response.is_closed


def test_exception_in_the_loop_body_closes_the_response() -> None:
    body = TrackedStream([THREE_CHUNKS])
    with respx.mock(base_url=API) as router:
        stream = open_chat_stream(router, body)
        with pytest.raises(KeyError):
            for _chunk in stream:
                raise KeyError("consumer failed")
        assert body.closed


def test_context_manager_closes_an_unread_stream() -> None:
    body = TrackedStream([THREE_CHUNKS])
    with respx.mock(base_url=API) as router:
        with open_chat_stream(router, body):
            pass
        assert body.closed
        assert body.chunks_sent == 0


def test_a_stream_can_be_iterated_only_once() -> None:
    with respx.mock(base_url=API) as router:
        stream = open_chat_stream(router, TrackedStream([THREE_CHUNKS]))
        list(stream)
        with pytest.raises(RuntimeError, match="only once"):
            iter(stream)


@pytest.mark.parametrize(
    "error_event",
    [
        b'data: {"error": {"message": "engine died", "type": "server_error", "code": 500}}\n\n',
        b'event: error\ndata: {"error": {"message": "engine died", "code": "500"}}\n\n',
        b'event: error\ndata: {"message": "engine died"}\n\n',
    ],
)
def test_error_event_raises_api_error_with_its_message(error_event: bytes) -> None:
    body = TrackedStream([sse(chat_chunk("partial")), error_event, sse(chat_chunk("never"))])
    received = []
    with respx.mock(base_url=API) as router:
        stream = open_chat_stream(router, body)
        with pytest.raises(APIError) as caught:
            for chunk in stream:
                received.append(chunk.choices[0].delta.content)
    assert received == ["partial"]
    assert caught.value.message == "engine died"
    assert caught.value.request_id == stream.request_id
    assert body.closed


def test_error_event_with_a_status_code_maps_to_its_class() -> None:
    event = b'event: error\ndata: {"error": {"message": "overloaded", "code": 503}}\n\n'
    with respx.mock(base_url=API) as router:
        stream = open_chat_stream(router, TrackedStream([event]))
        with pytest.raises(InternalServerError) as caught:
            list(stream)
    assert caught.value.status_code == 503


def test_error_event_with_non_json_data() -> None:
    with respx.mock(base_url=API) as router:
        stream = open_chat_stream(router, TrackedStream([b"event: error\ndata: out of memory\n\n"]))
        with pytest.raises(APIError, match="out of memory"):
            list(stream)


def test_malformed_chunk_raises_validation_error() -> None:
    with respx.mock(base_url=API) as router:
        stream = open_chat_stream(router, TrackedStream([b"data: {not json\n\n"]))
        with pytest.raises(APIResponseValidationError):
            list(stream)


def test_read_timeout_mid_stream_raises_api_timeout_error() -> None:
    class TimingOutStream(TrackedStream):
        def __iter__(self):
            yield sse(chat_chunk("one"))
            raise httpx.ReadTimeout("no data for 30 s")

    body = TimingOutStream([])
    with respx.mock(base_url=API) as router:
        stream = open_chat_stream(router, body)
        with pytest.raises(APITimeoutError):
            list(stream)
    assert body.closed


# -- async ----------------------------------------------------------------------------------


async def open_async_chat_stream(
    router: respx.MockRouter, body: AsyncTrackedStream
) -> AsyncStream[ChatCompletionChunk]:
    router.post("/chat/completions").mock(return_value=httpx.Response(200, stream=body))
    client = AsyncClient(base_url=BASE)
    return await client.chat.completions.create("tiny", MESSAGES, stream=True)


@pytest.mark.anyio
async def test_async_stream_yields_chunks_and_closes_at_the_end() -> None:
    body = AsyncTrackedStream(split_every(THREE_CHUNKS, 3))
    with respx.mock(base_url=API) as router:
        stream = await open_async_chat_stream(router, body)
        contents = [chunk.choices[0].delta.content async for chunk in stream]
    assert contents == ["Hel", "lo", None]
    assert body.closed


@pytest.mark.anyio
async def test_async_break_closes_the_response() -> None:
    body = AsyncTrackedStream([THREE_CHUNKS])
    with respx.mock(base_url=API) as router:
        stream = await open_async_chat_stream(router, body)
        async for _chunk in stream:
            break
        # The event loop finalises the abandoned generator at its next turns.
        for _ in range(50):
            if body.closed:
                break
            await anyio.sleep(0)
    assert body.closed


@pytest.mark.anyio
async def test_async_context_manager_closes_after_break() -> None:
    body = AsyncTrackedStream([THREE_CHUNKS])
    with respx.mock(base_url=API) as router:
        stream = await open_async_chat_stream(router, body)
        async with stream:
            async for _chunk in stream:
                break
        assert body.closed


@pytest.mark.anyio
async def test_async_error_event_raises_and_closes() -> None:
    event = b'event: error\ndata: {"error": {"message": "engine died"}}\n\n'
    body = AsyncTrackedStream([sse(chat_chunk("partial")), event])
    with respx.mock(base_url=API) as router:
        stream = await open_async_chat_stream(router, body)
        with pytest.raises(APIError, match="engine died"):
            async for _chunk in stream:
                pass
    assert body.closed


@pytest.mark.anyio
async def test_async_stream_is_not_retried_after_yielding(sleeps: list[float]) -> None:
    body = AsyncTrackedStream([sse(chat_chunk("first")), sse(chat_chunk("second"))], fail_after=1)
    with respx.mock(base_url=API) as router:
        route = router.post("/chat/completions").mock(return_value=httpx.Response(200, stream=body))
        stream = await AsyncClient(base_url=BASE).chat.completions.create(
            "tiny", MESSAGES, stream=True
        )
        received = []
        with pytest.raises(APIConnectionError):
            async for chunk in stream:
                received.append(chunk.choices[0].delta.content)
    assert received == ["first"]
    assert route.call_count == 1
    assert sleeps == []
    assert body.closed
