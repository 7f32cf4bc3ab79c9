"""Every map that holds a request while it runs is empty again once the traffic has ended.

A request is registered in several places on its way through (the server's admission count,
the async engine's output streams, the engine's request table, the scheduler's request,
arrival and held-sibling maps, the block manager's live sequences and their prefix hashes, the
structured-output matchers). One entry left behind per cancelled or refused request is the
shape of a slow leak that only a long soak would show as RSS growth; here it fails at once.
The server runs in this process (uvicorn in a thread, real sockets) so that clients really hang
up mid-stream and the engine's insides can be read afterwards."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from fixtures_models import TinyModel
from server_process import free_port
from stress_scenarios import (
    async_client,
    concurrent_streams,
    random_prompt,
    run_stream,
    wait_until_idle,
)
from ziggurat_core.engine.async_engine import AsyncEngine
from ziggurat_server.app import create_app
from ziggurat_server.settings import ServerSettings
from ziggurat_server.state import ServerState


@pytest.fixture(scope="module")
def live_app(tiny_model: TinyModel) -> Iterator[tuple[str, ServerState]]:
    settings = ServerSettings(model=str(tiny_model.gguf_path), served_model_name="tiny",
                              num_kv_blocks=128, max_num_seqs=16, max_model_len=256)
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the in-process server never became ready"
        time.sleep(0.1)
    yield base_url, app.state.server
    server.should_exit = True
    thread.join(60)


def held_entries(state: ServerState) -> dict[str, Any]:
    """What each place that registers a request still holds."""
    engine = state.engine
    assert isinstance(engine, AsyncEngine)
    inner = engine.engine
    scheduler = inner.scheduler
    blocks = scheduler.block_manager
    return {
        "admission in flight": state.admission.in_flight,
        "async engine streams": len(engine._streams),
        "engine requests": len(inner._requests),
        "scheduler requests": len(scheduler._requests),
        "scheduler arrivals": len(scheduler._arrival),
        "scheduler held siblings": len(scheduler._held_siblings),
        "block manager live sequences": len(blocks._live),
        "block manager sequence hashes": len(blocks._seq_hashes),
        "structured-output matchers": inner.structured_output.num_live,
    }


async def mixed_traffic(base_url: str) -> list[int]:
    """Requests of every kind that leaves early: hung-up streams (n=1 and n=2, with stop strings
    and with a JSON schema), refused prompts, and ordinary ones. Returns the status codes."""
    import random

    draw = random.Random(5)
    json_format = {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}}}
    async with async_client(base_url) as http:
        streams = [
            run_stream(http, {"prompt": random_prompt(draw, 16), "max_tokens": 24, "n": 2,
                              "ignore_eos": True}, cancel_after=3),
            run_stream(http, {"prompt": random_prompt(draw, 16), "max_tokens": 24,
                              "stop": ["zz", "qq"], "ignore_eos": True}, cancel_after=2),
            run_stream(http, {"messages": [{"role": "user", "content": "hi"}],
                              "max_tokens": 24, "response_format": json_format},
                       cancel_after=2, path="/v1/chat/completions"),
            run_stream(http, {"prompt": random_prompt(draw, 8), "max_tokens": 8}, None),
        ]
        plain = [
            http.post("/v1/completions", json={"prompt": random_prompt(draw, 300),
                                               "max_tokens": 4}),  # over the context: 400
            http.post("/v1/completions", json={"prompt": random_prompt(draw, 8),
                                               "max_tokens": 4, "n": 3}),
            http.post("/v1/chat/completions", json={
                "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4,
                "response_format": json_format}),
        ]
        outcomes = await asyncio.gather(*streams, *plain)
        await wait_until_idle(http)
    return [outcome.status if hasattr(outcome, "status") else outcome.status_code
            for outcome in outcomes]


def test_every_request_map_is_empty_after_streams_cancellations_and_refusals(
        live_app: tuple[str, ServerState]) -> None:
    base_url, state = live_app
    report = asyncio.run(concurrent_streams(base_url, num_streams=40, cancel_fraction=0.4,
                                            max_tokens=16))
    assert report.problems == []
    assert report.figures["cancelled"] > 0
    statuses = asyncio.run(mixed_traffic(base_url))
    assert statuses == [200, 200, 200, 200, 400, 200, 200]
    assert held_entries(state) == dict.fromkeys(held_entries(state), 0)
