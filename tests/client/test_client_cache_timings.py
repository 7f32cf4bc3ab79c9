"""`cache=True` goes into the request body; `cached` and `timings` come back typed, on
responses and on the last stream chunk, for the sync and async clients."""

from __future__ import annotations

import httpx
import pytest
import respx
from client_helpers import (
    API,
    BASE,
    chat_chunk,
    chat_completion_body,
    completion_body,
    sent_json,
    sse,
)
from ziggurat import AsyncClient, Client
from ziggurat.types import Timings

MESSAGES = [{"role": "user", "content": "hi"}]
TIMINGS = {"prompt_n": 3, "prompt_ms": 12.5, "prompt_per_token_ms": 4.167,
           "prompt_per_second": 240.0, "predicted_n": 2, "predicted_ms": 8.0,
           "predicted_per_token_ms": 8.0, "predicted_per_second": 125.0, "cache_n": 16,
           "queue_ms": 0.5, "ttft_ms": 13.0, "total_ms": 21.0}
USAGE = {"prompt_tokens": 19, "completion_tokens": 2, "total_tokens": 21,
         "prompt_tokens_details": {"cached_tokens": 16}}



def test_cache_is_sent_and_cached_timings_come_back_typed() -> None:
    with respx.mock(base_url=API) as router:
        route = router.post("/chat/completions").respond(200, json=chat_completion_body(
            usage=USAGE, timings=TIMINGS, cached=True))
        response = Client(base_url=BASE).chat.completions.create(
            "tiny", MESSAGES, temperature=0, cache=True)
    assert sent_json(route)["cache"] is True
    assert response.cached is True
    assert isinstance(response.timings, Timings)
    assert response.timings.cache_n == 16 and response.timings.ttft_ms == 13.0
    assert response.timings.predicted_per_second == 125.0
    assert response.usage is not None and response.usage.prompt_tokens_details is not None
    assert response.usage.prompt_tokens_details.cached_tokens == 16


def test_cache_left_out_is_not_sent_and_reads_as_none() -> None:
    with respx.mock(base_url=API) as router:
        route = router.post("/completions").respond(200, json=completion_body())
        response = Client(base_url=BASE).completions.create("tiny", "Hello")
    assert "cache" not in sent_json(route)
    assert response.cached is None and response.timings is None


def test_cache_false_is_sent_to_opt_out_of_a_server_wide_cache() -> None:
    with respx.mock(base_url=API) as router:
        route = router.post("/completions").respond(200, json=completion_body(cached=False))
        response = Client(base_url=BASE).completions.create("tiny", "Hello", cache=False)
    assert sent_json(route)["cache"] is False
    assert response.cached is False


def final_chunk() -> dict:
    chunk = chat_chunk(None, "stop")
    chunk.update(timings=TIMINGS, cached=True)
    return chunk


def test_the_last_stream_chunk_carries_timings_and_cached() -> None:
    body = sse(chat_chunk("Hel"), chat_chunk("lo"), final_chunk(), "[DONE]")
    with respx.mock(base_url=API) as router:
        route = router.post("/chat/completions").mock(
            return_value=httpx.Response(200, content=body))
        chunks = list(Client(base_url=BASE).chat.completions.create(
            "tiny", MESSAGES, stream=True, seed=3, cache=True))
    assert sent_json(route)["cache"] is True
    assert [chunk.timings for chunk in chunks[:-1]] == [None, None]
    assert chunks[-1].cached is True
    assert isinstance(chunks[-1].timings, Timings) and chunks[-1].timings.predicted_n == 2


@pytest.mark.anyio
async def test_async_client_reads_cached_and_timings() -> None:
    with respx.mock(base_url=API) as router:
        route = router.post("/chat/completions").respond(200, json=chat_completion_body(
            timings=TIMINGS, cached=False))
        async with AsyncClient(base_url=BASE) as client:
            response = await client.chat.completions.create("tiny", MESSAGES, cache=True)
    assert sent_json(route)["cache"] is True
    assert response.cached is False
    assert response.timings is not None and response.timings.total_ms == 21.0
