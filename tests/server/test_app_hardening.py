"""Hardening checks that need the app in-process (with the real engine): the order in which
things happen while a prompt is tokenised, and what shutdown does to requests left over."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
import pytest
from fixtures_models import TinyModel
from test_app_inprocess import run_with_app
from ziggurat_server.app import create_app
from ziggurat_server.serving_engine import load_async_engine
from ziggurat_server.settings import ServerSettings


@pytest.fixture()
def settings(tiny_model: TinyModel) -> ServerSettings:
    return ServerSettings(model=str(tiny_model.gguf_path), served_model_name="tiny",
                          num_kv_blocks=64)


def test_health_answers_while_a_long_prompt_is_being_tokenised(settings: ServerSettings) -> None:
    """The engine's own tokenizer is held inside encode until /health has been answered: on
    the event loop (or the engine thread the request waits for) that could never happen."""
    engine: Any = load_async_engine(settings.engine_config())
    real_encode = engine.encode
    inside = threading.Event()
    release = threading.Event()

    def held_encode(text: str, add_special_tokens: bool = True) -> list[int]:
        if text.startswith("HOLD"):
            inside.set()
            assert release.wait(60), "never released: /health did not answer meanwhile"
        result: list[int] = real_encode(text, add_special_tokens=add_special_tokens)
        return result

    engine.encode = held_encode

    async def scenario(http: httpx.AsyncClient) -> None:
        held = asyncio.ensure_future(http.post("/v1/completions", json={
            "prompt": "HOLD " * 1000, "max_tokens": 2}))
        assert await asyncio.to_thread(inside.wait, 60)
        health = await http.get("/health")
        assert health.status_code == 200
        assert not held.done()
        release.set()
        response = await held  # longer than the tiny model's context window: refused
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == "prompt" and "context window" in error["message"]
        served = await http.post("/v1/completions", json={"prompt": "HOLD on", "max_tokens": 2})
        assert served.status_code == 200, served.text

    try:
        run_with_app(create_app(settings, engine=engine), scenario)
    finally:
        release.set()
