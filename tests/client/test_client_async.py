"""AsyncClient under asyncio and trio: the same behaviour as Client, plus many concurrent calls."""

from __future__ import annotations

import asyncio
import json

import anyio
import httpx
import pytest
import respx
from client_helpers import API, BASE, chat_completion_body, completion_body
from ziggurat import (
    APITimeoutError,
    AsyncClient,
    AuthenticationError,
    InternalServerError,
)

pytestmark = pytest.mark.anyio

MESSAGES = [{"role": "user", "content": "hi"}]


async def test_chat_completion() -> None:
    with respx.mock(base_url=API) as router:
        route = router.post("/chat/completions").respond(200, json=chat_completion_body("async hi"))
        async with AsyncClient(base_url=BASE, api_key="k") as client:
            reply = await client.chat.completions.create("tiny", MESSAGES, max_tokens=4)
    assert reply.choices[0].message.content == "async hi"
    assert json.loads(route.calls.last.request.content)["max_tokens"] == 4
    assert route.calls.last.request.headers["Authorization"] == "Bearer k"
    assert client.is_closed


async def test_tokenize_and_detokenize() -> None:
    with respx.mock(base_url=BASE) as router:
        tokenize = router.post("/tokenize").respond(200, json={"tokens": [7], "count": 1})
        router.post("/detokenize").respond(200, json={"prompt": "hi"})
        async with AsyncClient(base_url=BASE) as client:
            counted = await client.tokenize(prompt="hi", add_special_tokens=False)
            text = await client.detokenize(counted.tokens)
    assert counted.tokens == [7] and text.prompt == "hi"
    assert json.loads(tokenize.calls.last.request.content) == {
        "prompt": "hi", "add_special_tokens": False}


async def test_retries_keep_request_id_and_count_attempts(sleeps: list[float]) -> None:
    with respx.mock(base_url=API) as router:
        route = router.post("/completions")
        route.side_effect = [
            httpx.Response(503, headers={"Retry-After": "2"}),
            httpx.ReadTimeout("slow"),
            httpx.Response(200, json=completion_body(" done")),
        ]
        async with AsyncClient(base_url=BASE) as client:
            completion = await client.completions.create("tiny", "Say")
    assert completion.choices[0].text == " done"
    headers = [call.request.headers for call in route.calls]
    assert len({h["X-Request-Id"] for h in headers}) == 1
    assert [h["X-Ziggurat-Attempt"] for h in headers] == ["1", "2", "3"]
    assert sleeps[0] == 2.0 and len(sleeps) == 2


async def test_errors_map_to_classes() -> None:
    with respx.mock(base_url=API) as router:
        router.get("/models").respond(401, json={"error": {"message": "invalid API key"}})
        router.get("/info").respond(500, json={"error": {"message": "engine crashed"}})
        async with AsyncClient(base_url=BASE, max_retries=0) as client:
            with pytest.raises(AuthenticationError, match="invalid API key"):
                await client.models.list()
            with pytest.raises(InternalServerError, match="engine crashed"):
                await client.info()


async def test_timeout_after_retries() -> None:
    with respx.mock(base_url=API) as router:
        route = router.get("/models").mock(side_effect=httpx.ConnectTimeout("no route"))
        async with AsyncClient(base_url=BASE, max_retries=2) as client:
            with pytest.raises(APITimeoutError):
                await client.models.list(timeout=0.5)
    assert route.call_count == 3
    assert route.calls.last.request.extensions["timeout"]["connect"] == 0.5


async def test_models_info_and_health() -> None:
    with respx.mock() as router:
        router.get(f"{API}/models").respond(200, json={"data": [{"id": "m"}]})
        router.get(f"{API}/models/m").respond(200, json={"id": "m", "context_length": 2048})
        router.get(f"{API}/info").respond(200, json={"version": "0.1.0", "models": ["m"]})
        router.get(f"{BASE}/health").respond(503, json={"status": "loading"})
        async with AsyncClient(base_url=f"{BASE}/v1/") as client:
            assert (await client.models.list()).data[0].id == "m"
            assert (await client.models.get("m")).context_length == 2048
            assert (await client.info()).version == "0.1.0"
            assert (await client.health()).status == "loading"


async def test_with_options_shares_the_pool() -> None:
    async with AsyncClient(base_url=BASE) as client:
        copy = client.with_options(timeout=3.0, headers={"X-A": "1"})
        assert copy._http_client is client._http_client
        await copy.close()
        assert not client.is_closed
    assert client.is_closed


async def test_many_concurrent_requests_share_one_client() -> None:
    """Under either backend: 50 calls in flight at once on one client, each gets its own reply."""
    count = 50
    in_flight = 0
    all_in_flight = anyio.Event()

    async def answer(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight
        in_flight += 1
        if in_flight == count:
            all_in_flight.set()
        await all_in_flight.wait()  # no reply until every request has arrived
        prompt = json.loads(request.content)["prompt"]
        return httpx.Response(200, json=completion_body(f"echo {prompt}"))

    results: dict[int, str] = {}
    with respx.mock(base_url=API) as router:
        router.post("/completions").mock(side_effect=answer)
        async with AsyncClient(base_url=BASE) as client:

            async def one(index: int) -> None:
                completion = await client.completions.create("tiny", f"p{index}")
                results[index] = completion.choices[0].text

            async with anyio.create_task_group() as group:
                for index in range(count):
                    group.start_soon(one, index)
    assert results == {index: f"echo p{index}" for index in range(count)}


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_asyncio_gather_over_200_requests_shares_one_pool() -> None:
    count = 200
    in_flight = 0
    all_in_flight = asyncio.Event()

    async def answer(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight
        in_flight += 1
        if in_flight == count:
            all_in_flight.set()
        await all_in_flight.wait()
        messages = json.loads(request.content)["messages"]
        return httpx.Response(200, json=chat_completion_body(messages[0]["content"].upper()))

    with respx.mock(base_url=API) as router:
        route = router.post("/chat/completions").mock(side_effect=answer)
        async with AsyncClient(base_url=BASE) as client:
            pool = client._http_client
            sends = 0
            original_send = pool.send

            async def counting_send(*args: object, **kwargs: object) -> httpx.Response:
                nonlocal sends
                sends += 1
                return await original_send(*args, **kwargs)  # type: ignore[arg-type]

            pool.send = counting_send  # type: ignore[method-assign]
            replies = await asyncio.gather(
                *(
                    client.chat.completions.create(
                        "tiny", [{"role": "user", "content": f"prompt {index}"}]
                    )
                    for index in range(count)
                )
            )
    assert [reply.choices[0].message.content for reply in replies] == [
        f"PROMPT {index}" for index in range(count)
    ]
    assert sends == count  # every request went through the one shared httpx pool
    assert route.call_count == count
    assert len({call.request.headers["X-Request-Id"] for call in route.calls}) == count
