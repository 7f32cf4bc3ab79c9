"""The response cache under server settings a shared server process cannot take: on for every
request, small bounds, an injected clock for expiry, and an engine failing mid-stream. The app
runs in-process with the real engine."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fixtures_models import TinyModel
from server_helpers import DONE, fresh_prompt, metric_value, parse_sse
from ziggurat_server.app import create_app
from ziggurat_server.response_cache import ResponseCache
from ziggurat_server.serving_engine import ServingEngine, load_async_engine
from ziggurat_server.settings import ServerSettings

Scenario = Callable[[httpx.AsyncClient], Awaitable[None]]
CAPACITY_EVICTIONS = 'ziggurat_response_cache_evictions_total{reason="capacity"}'
EXPIRED_EVICTIONS = 'ziggurat_response_cache_evictions_total{reason="expired"}'


def tiny_settings(tiny_model: TinyModel, **options: Any) -> ServerSettings:
    return ServerSettings(model=str(tiny_model.gguf_path), served_model_name="tiny",
                          num_kv_blocks=64, **options)


@pytest.fixture(scope="module")
def engine(tiny_model: TinyModel) -> Iterator[ServingEngine]:
    """One engine for the apps of this module (an app without its lifespan leaves it running)."""
    engine = load_async_engine(tiny_settings(tiny_model).engine_config())
    yield engine
    engine.shutdown()


def run(app: FastAPI, scenario: Scenario) -> None:
    async def main() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://test") as http:
            await scenario(http)

    asyncio.run(main())


async def complete(http: httpx.AsyncClient, prompt: list[int], **extra: Any) -> dict[str, Any]:
    response = await http.post("/v1/completions", json={
        "prompt": prompt, "max_tokens": 3, "temperature": 0, **extra})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def exposition(http: httpx.AsyncClient) -> str:
    return (await http.get("/metrics")).text


def test_response_cache_setting_caches_every_request(tiny_model: TinyModel,
                                                     engine: ServingEngine) -> None:
    app = create_app(tiny_settings(tiny_model, response_cache=True), engine=engine)

    async def scenario(http: httpx.AsyncClient) -> None:
        prompt = fresh_prompt(5)
        assert (await complete(http, prompt))["cached"] is False
        assert (await complete(http, prompt))["cached"] is True
        opted_out = await complete(http, prompt, cache=False)
        assert "cached" not in opted_out

    run(app, scenario)


def test_entries_beyond_the_bound_evict_the_oldest(tiny_model: TinyModel,
                                                   engine: ServingEngine) -> None:
    app = create_app(tiny_settings(tiny_model, response_cache_max_entries=2), engine=engine)

    async def scenario(http: httpx.AsyncClient) -> None:
        first, second, third = fresh_prompt(5), fresh_prompt(5), fresh_prompt(5)
        for prompt in (first, second, third):
            await complete(http, prompt, cache=True)
        metrics = await exposition(http)
        assert metric_value(metrics, CAPACITY_EVICTIONS) == 1
        assert metric_value(metrics, "ziggurat_response_cache_entries") == 2
        assert (await complete(http, third, cache=True))["cached"] is True
        assert (await complete(http, first, cache=True))["cached"] is False

    run(app, scenario)


def test_bytes_beyond_the_bound_evict_the_oldest(tiny_model: TinyModel,
                                                 engine: ServingEngine) -> None:
    app = create_app(tiny_settings(tiny_model), engine=engine)
    state = app.state.server

    async def scenario(http: httpx.AsyncClient) -> None:
        first, second = fresh_prompt(5), fresh_prompt(5)
        await complete(http, first, cache=True)
        one_response = state.response_cache.nbytes
        # Room for one response of this shape and a half, so a second one displaces the first.
        state.response_cache = ResponseCache(10, one_response * 3 // 2, 60.0,
                                             state.metrics.response_cache)
        await complete(http, first, cache=True)
        await complete(http, second, cache=True)
        assert len(state.response_cache) == 1
        assert (await complete(http, second, cache=True))["cached"] is True
        assert (await complete(http, first, cache=True))["cached"] is False
        assert metric_value(await exposition(http), CAPACITY_EVICTIONS) >= 1

    run(app, scenario)


def test_a_response_expires_after_the_ttl(tiny_model: TinyModel, engine: ServingEngine) -> None:
    app = create_app(tiny_settings(tiny_model, response_cache_ttl=30), engine=engine)
    state = app.state.server
    now = [0.0]
    state.response_cache = ResponseCache(10, 10**6, state.settings.response_cache_ttl,
                                         state.metrics.response_cache, clock=lambda: now[0])

    async def scenario(http: httpx.AsyncClient) -> None:
        prompt = fresh_prompt(5)
        await complete(http, prompt, cache=True)
        now[0] = 29.0
        assert (await complete(http, prompt, cache=True))["cached"] is True
        now[0] = 30.0
        assert (await complete(http, prompt, cache=True))["cached"] is False
        assert metric_value(await exposition(http), EXPIRED_EVICTIONS) == 1

    run(app, scenario)


def test_a_stream_that_fails_is_not_stored(tiny_model: TinyModel) -> None:
    failing: Any = load_async_engine(tiny_settings(tiny_model).engine_config())
    real_step = failing.engine.step
    steps = 0

    def step_then_fail() -> Any:
        nonlocal steps
        steps += 1
        if steps > 3:
            raise RuntimeError("simulated device failure")
        return real_step()

    failing.engine.step = step_then_fail  # fault injection into the real engine's loop
    app = create_app(tiny_settings(tiny_model), engine=failing)

    async def scenario(http: httpx.AsyncClient) -> None:
        response = await http.post("/v1/completions", json={
            "prompt": fresh_prompt(5), "max_tokens": 50, "ignore_eos": True, "temperature": 0,
            "stream": True, "cache": True})
        events = parse_sse(response.text)
        assert DONE not in events and events[-1]["error"]["code"] == "engine_dead"
        assert len(app.state.server.response_cache) == 0

    try:
        run(app, scenario)
    finally:
        failing.shutdown()
