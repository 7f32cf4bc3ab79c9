"""API-key auth and the waiting-queue limit, on a server started with --api-key and tiny limits."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from fixtures_models import TinyModel
from server_process import ServerProcess, clean_environment
from stress_scenarios import auth_sweep

API_KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def guarded_server(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[ServerProcess]:
    # The key comes from the environment, the limits from flags: both sources in one go.
    server = ServerProcess(tmp_path_factory.mktemp("guarded-logs"),
                           "--model", str(tiny_model.gguf_path), "--served-model-name", "tiny",
                           "--max-num-seqs", "1", "--max-queue", "1",
                           env=clean_environment(ZIGGURAT_API_KEY=API_KEY))
    server.wait_ready()
    yield server
    server.stop()


@pytest.fixture()
def http(guarded_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=guarded_server.base_url, timeout=60.0) as client:
        yield client


def test_health_needs_no_key(http: httpx.Client) -> None:
    assert http.get("/health").status_code == 200


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {API_KEY}"},
    {"Authorization": f"Bearer {API_KEY}x"},
])
def test_missing_or_wrong_key_is_401(http: httpx.Client, headers: dict[str, str]) -> None:
    for method, path in (("GET", "/v1/models"), ("POST", "/v1/completions"), ("GET", "/metrics")):
        response = http.request(method, path, headers=headers, json={"prompt": "x"})
        assert response.status_code == 401
        error = response.json()["error"]
        assert error["code"] == "invalid_api_key"
        assert set(error) == {"message", "type", "param", "code"}
        assert response.headers["x-request-id"]


def test_right_key_is_accepted(http: httpx.Client, guarded_server: ServerProcess) -> None:
    assert http.get("/v1/models", headers=AUTH).status_code == 200
    with openai.OpenAI(base_url=f"{guarded_server.base_url}/v1", api_key=API_KEY,
                       max_retries=0) as sdk:
        assert sdk.completions.create(model="tiny", prompt="Hi", max_tokens=2).choices
    with openai.OpenAI(base_url=f"{guarded_server.base_url}/v1", api_key="nope",
                       max_retries=0) as sdk, pytest.raises(openai.AuthenticationError):
        sdk.models.list()


def _waiting(http: httpx.Client) -> int:
    stats = http.get("/v1/info", headers=AUTH).json()["engine"]["stats"]
    return int(stats["waiting"])


def test_full_queue_is_429_with_retry_after(http: httpx.Client,
                                            guarded_server: ServerProcess) -> None:
    long_body = {"prompt": [5, 6, 7], "max_tokens": 240, "ignore_eos": True, "stream": True}
    queued_result: dict[str, Any] = {}

    def queued_request() -> None:
        with httpx.Client(base_url=guarded_server.base_url, timeout=120.0) as other:
            response = other.post("/v1/completions", headers=AUTH,
                                  json={"prompt": [9, 9], "max_tokens": 2, "ignore_eos": True})
            queued_result["status"] = response.status_code

    with httpx.Client(base_url=guarded_server.base_url, timeout=60.0) as streamer, \
            streamer.stream("POST", "/v1/completions", headers=AUTH, json=long_body) as running:
        # Keep the line iterator referenced: dropping it closes the connection (an abort).
        lines = running.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert json.loads(first[6:])["choices"]
        # The one decode slot is taken: the next request waits in the queue (limit 1).
        waiter = threading.Thread(target=queued_request)
        waiter.start()
        deadline = time.monotonic() + 30
        while _waiting(http) != 1:
            assert time.monotonic() < deadline, "the second request never queued"
            time.sleep(0.01)
        refused = http.post("/v1/completions", headers=AUTH, json={"prompt": "Hi"})
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        error = refused.json()["error"]
        assert error["type"] == "rate_limit_error" and error["code"] == "queue_full"
    # Closing the long stream frees the slot: the queued request then runs to completion.
    waiter.join(60)
    assert queued_result == {"status": 200}
    assert http.post("/v1/completions", headers=AUTH,
                     json={"prompt": "Hi", "max_tokens": 1}).status_code == 200


def test_every_documented_route_but_health_needs_the_key(guarded_server: ServerProcess) -> None:
    # The sweep reads the OpenAPI document, so a route added later is swept too.
    report = asyncio.run(auth_sweep(guarded_server.base_url, API_KEY))
    assert report.problems == []
    assert report.figures["operations"] > 10
