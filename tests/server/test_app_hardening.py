"""Hardening checks that need the app in-process (with the real engine): the order in which
things happen while a prompt is tokenised, and what shutdown does to requests left over."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fixtures_models import TinyModel
from test_app_inprocess import run_with_app
from ziggurat_server.app import create_app
from ziggurat_server.frontend_pool import THREAD_NAME_PREFIX
from ziggurat_server.serving_engine import load_async_engine
from ziggurat_server.settings import ServerSettings
from ziggurat_server.shutdown import ServerShuttingDown
from ziggurat_server.thread_priority import NICEST, thread_nice, thread_nice_supported


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


@pytest.mark.skipif(not thread_nice_supported(), reason="per-thread nice values exist on Linux only")
def test_prompts_are_rendered_tokenised_and_detokenised_in_the_niced_pool_closed_at_shutdown(
        tiny_model: TinyModel) -> None:
    settings = ServerSettings(model=str(tiny_model.gguf_path), served_model_name="tiny",
                              num_kv_blocks=64, frontend_nice=4, frontend_threads=2)
    engine: Any = load_async_engine(settings.engine_config())
    seen: list[tuple[str, str, int]] = []  # (what, thread name, nice value)

    def recorded(what: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            seen.append((what, threading.current_thread().name, thread_nice()))
            return real(*args, **kwargs)
        return call

    for what in ("encode", "decode", "apply_chat_template"):
        setattr(engine, what, recorded(what, getattr(engine, what)))
    base = thread_nice()

    async def scenario(http: httpx.AsyncClient) -> None:
        for path, body in (
                ("/v1/completions", {"prompt": "Hello there", "max_tokens": 2}),
                ("/v1/completions", {"prompt": [1, 2, 3], "max_tokens": 2, "echo": True}),
                ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}],
                                          "max_tokens": 2}),
                ("/tokenize", {"prompt": "Hello"}),
                ("/detokenize", {"tokens": [1, 2, 3]})):
            response = await http.post(path, json=body)
            assert response.status_code == 200, (path, response.text)
        assert (await http.get("/health")).status_code == 200

    app = create_app(settings, engine=engine)
    run_with_app(app, scenario)
    assert {what for what, _, _ in seen} == {"encode", "decode", "apply_chat_template"}
    assert all(name.startswith(THREAD_NAME_PREFIX) for _, name, _ in seen), seen
    assert {nice for _, _, nice in seen} == {min(NICEST, base + 4)}
    # The app's shutdown closed the pool: its threads are gone and it takes no more work.
    assert not [t for t in threading.enumerate() if t.name.startswith(THREAD_NAME_PREFIX)]
    with pytest.raises(ServerShuttingDown):
        asyncio.run(app.state.server.frontend.run(lambda: None))
