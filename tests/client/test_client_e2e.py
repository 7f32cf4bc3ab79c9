"""The client against a real Ziggurat server process serving the default SmolLM2 model.

A server that exits early fails the module, a usage error (exit code 2) included: that means our
own CLI rejects the options below. Set ZIGGURAT_E2E_BASE_URL (and ZIGGURAT_E2E_API_KEY) to run them against a server
that is already running instead of starting one.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from ziggurat import (
    APIConnectionError,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    NotFoundError,
)

pytestmark = pytest.mark.slow

API_KEY = "e2e-secret-key"
START_TIMEOUT_S = 300.0
GREETING = [{"role": "user", "content": "Name three colours."}]


@dataclass(frozen=True)
class RunningServer:
    base_url: str
    api_key: str | None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_healthy(process: subprocess.Popen[bytes], base_url: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    probe = Client(base_url=base_url, max_retries=0, timeout=2.0)
    try:
        while time.monotonic() < deadline:
            code = process.poll()
            if code is not None:
                pytest.fail(f"ziggurat-server exited with {code}:\n{log.read_text()[-5000:]}")
            try:
                if probe.health().status == "ok":
                    return
            except APIConnectionError:
                pass
            time.sleep(0.25)
    finally:
        probe.close()
    pytest.fail(f"ziggurat-server not healthy after {START_TIMEOUT_S}s:\n{log.read_text()[-5000:]}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    external = os.environ.get("ZIGGURAT_E2E_BASE_URL")
    if external:
        yield RunningServer(external, os.environ.get("ZIGGURAT_E2E_API_KEY"))
        return
    port = _free_port()
    log = tmp_path_factory.mktemp("e2e-server") / "server.log"
    command = [
        sys.executable, "-m", "ziggurat_server.cli", "serve",
        "--model", "default", "--host", "127.0.0.1", "--port", str(port),
        "--api-key", API_KEY, "--max-model-len", "2048", "--num-kv-blocks", "512",
    ]  # fmt: skip
    environment = {k: v for k, v in os.environ.items() if not k.startswith("ZIGGURAT_")}
    with open(log, "wb") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env=environment
        )
    try:
        base_url = f"http://127.0.0.1:{port}"
        _wait_until_healthy(process, base_url, log)
        yield RunningServer(base_url, API_KEY)
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[Client]:
    with Client(base_url=server.base_url, api_key=server.api_key, timeout=120.0) as client:
        yield client


@pytest.fixture(scope="module")
def model(client: Client) -> str:
    return client.models.list().data[0].id


def test_models_info_and_health(client: Client, model: str) -> None:
    assert client.models.get(model).id == model
    assert model in client.info().models
    assert client.health().status == "ok"


def test_chat_completion_respects_max_tokens(client: Client, model: str) -> None:
    reply = client.chat.completions.create(model, GREETING, max_tokens=6, temperature=0.0)
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert reply.usage is not None
    assert 1 <= reply.usage.completion_tokens <= 6
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    if choice.finish_reason == "length":
        assert reply.usage.completion_tokens == 6


def test_streamed_chat_matches_the_greedy_reply(client: Client, model: str) -> None:
    whole = client.chat.completions.create(model, GREETING, max_tokens=12, temperature=0.0)
    stream = client.chat.completions.create(
        model,
        GREETING,
        max_tokens=12,
        temperature=0.0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(choice.delta.content or "" for chunk in chunks for choice in chunk.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage is not None
    assert whole.usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert stream.response.is_closed


def test_completion_echo_and_stop(client: Client, model: str) -> None:
    prompt = "The three primary colours are"
    echoed = client.completions.create(model, prompt, max_tokens=4, temperature=0.0, echo=True)
    assert echoed.choices[0].text.startswith(prompt)
    plain = client.completions.create(model, prompt, max_tokens=4, temperature=0.0)
    assert echoed.choices[0].text == prompt + plain.choices[0].text


def test_breaking_a_stream_leaves_the_server_usable(client: Client, model: str) -> None:
    stream = client.completions.create(model, "Once upon a time", max_tokens=200, stream=True)
    for _chunk in stream:
        break
    assert stream.response.is_closed
    after = client.completions.create(model, "Hello", max_tokens=2)
    assert after.choices[0].text is not None


def test_tokenize_counts_what_a_chat_request_runs(client: Client, model: str) -> None:
    counted = client.tokenize(model=model, messages=GREETING)
    reply = client.chat.completions.create(model, GREETING, max_tokens=1)
    assert reply.usage is not None and counted.count == reply.usage.prompt_tokens
    assert counted.max_model_len is not None and counted.max_model_len > counted.count
    words = client.tokenize(model=model, prompt="Red, green and blue.")
    assert client.detokenize(words.tokens, model=model).prompt == "Red, green and blue."


def test_unknown_model_is_not_found_with_the_servers_message(client: Client) -> None:
    with pytest.raises(NotFoundError) as caught:
        client.chat.completions.create("no-such-model", GREETING, max_tokens=2)
    assert "no-such-model" in caught.value.message


def test_invalid_parameter_is_a_bad_request_with_our_request_id(client: Client, model: str) -> None:
    with pytest.raises(BadRequestError) as caught:
        client.chat.completions.create(
            model, GREETING, temperature=7.0, extra_headers={"X-Request-Id": "e2e-trace-1"}
        )
    assert "temperature" in caught.value.message
    assert caught.value.request_id == "e2e-trace-1"


def test_wrong_api_key_is_an_authentication_error(server: RunningServer, model: str) -> None:
    if server.api_key is None:
        pytest.skip("the external server runs without an API key")
    with Client(base_url=server.base_url, api_key="wrong-key") as wrong:
        with pytest.raises(AuthenticationError):
            wrong.models.list()
        assert wrong.health().status == "ok"  # /health needs no key


def test_async_gather_of_concurrent_requests(server: RunningServer, model: str) -> None:
    async def run() -> list[str]:
        async with AsyncClient(base_url=server.base_url, api_key=server.api_key) as client:
            replies = await asyncio.gather(
                *(
                    client.completions.create(model, f"Item {index}:", max_tokens=3)
                    for index in range(16)
                )
            )
        return [reply.choices[0].text for reply in replies]

    texts = asyncio.run(run())
    assert len(texts) == 16 and all(isinstance(text, str) for text in texts)


def test_async_stream_under_trio(server: RunningServer, model: str) -> None:
    async def run() -> str:
        async with AsyncClient(base_url=server.base_url, api_key=server.api_key) as client:
            stream = await client.chat.completions.create(
                model, GREETING, max_tokens=8, temperature=0.0, stream=True
            )
            async with stream:
                return "".join(
                    [
                        choice.delta.content or ""
                        async for chunk in stream
                        for choice in chunk.choices
                    ]
                )

    assert anyio.run(run, backend="trio")
