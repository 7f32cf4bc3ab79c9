"""The app in-process (httpx's ASGI transport) with the real engine, for states a live process
cannot be put in on demand: still loading, an engine that died, an unexpected internal error."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fixtures_models import TinyModel
from server_helpers import DONE, parse_sse
from ziggurat_core.engine.reports import EngineStats
from ziggurat_server.app import create_app
from ziggurat_server.serving_engine import ServingEngine, load_async_engine
from ziggurat_server.settings import ServerSettings

Scenario = Callable[[httpx.AsyncClient], Awaitable[None]]


@pytest.fixture()
def settings(tiny_model: TinyModel) -> ServerSettings:
    return ServerSettings(model=str(tiny_model.gguf_path), served_model_name="tiny",
                          num_kv_blocks=64)


def run_with_app(app: FastAPI, scenario: Scenario) -> None:
    async def main() -> None:
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            await scenario(http)

    asyncio.run(main())


def test_loading_answers_503_until_the_engine_is_ready(settings: ServerSettings) -> None:
    release = threading.Event()

    def gated_factory() -> ServingEngine:
        assert release.wait(60)
        return load_async_engine(settings.engine_config())

    async def scenario(http: httpx.AsyncClient) -> None:
        health = await http.get("/health")
        assert health.status_code == 503
        assert health.json()["status"] == "loading"
        refused = await http.post("/v1/completions", json={"prompt": "Hi"})
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "model_loading"
        release.set()
        deadline = time.monotonic() + 60
        while (health := await http.get("/health")).status_code != 200:
            assert health.json()["status"] == "loading", health.json()
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        served = await http.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
        assert served.status_code == 200
        # Once loaded, the start-up heap is out of the collector's full passes (startup_heap.py).
        assert gc.get_freeze_count() > 0

    gc.unfreeze()
    try:
        run_with_app(create_app(settings, engine_factory=gated_factory), scenario)
    finally:
        gc.unfreeze()  # this test process's heap is not a server's


def test_engine_death_mid_stream_sends_an_error_event(settings: ServerSettings) -> None:
    engine: Any = load_async_engine(settings.engine_config())
    real_step = engine.engine.step
    steps = 0

    def failing_step() -> Any:
        nonlocal steps
        steps += 1
        if steps > 3:
            raise RuntimeError("simulated device failure")
        return real_step()

    engine.engine.step = failing_step  # fault injection into the real engine's loop

    async def scenario(http: httpx.AsyncClient) -> None:
        response = await http.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 50,
            "ignore_eos": True, "stream": True})
        assert response.status_code == 200
        events = parse_sse(response.text)
        assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert DONE not in events
        error = events[-1]["error"]
        assert error["code"] == "engine_dead"
        assert "simulated device failure" not in error["message"]
        health = await http.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "error"
        refused = await http.post("/v1/completions", json={"prompt": "Hi"})
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "engine_dead"

    run_with_app(create_app(settings, engine=engine), scenario)


def test_unexpected_error_is_a_generic_500(settings: ServerSettings) -> None:
    engine: Any = load_async_engine(settings.engine_config())

    def broken_stats() -> EngineStats:
        raise RuntimeError("internal detail /secret/path")

    engine.stats = broken_stats

    async def scenario(http: httpx.AsyncClient) -> None:
        response = await http.get("/v1/info", headers={"X-Request-Id": "trace-500"})
        assert response.status_code == 500
        assert response.headers["x-request-id"] == "trace-500"
        error = response.json()["error"]
        assert error["type"] == "server_error"
        assert "secret" not in response.text and "Traceback" not in response.text

    run_with_app(create_app(settings, engine=engine), scenario)
