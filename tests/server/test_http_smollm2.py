"""The real default model (SmolLM2-135M-Instruct Q4_1) behind the server, as `make serve` runs it."""

from __future__ import annotations

from collections.abc import Iterator

import gguf
import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from server_process import ServerProcess
from ziggurat_core.engine.default_model import default_model_path

pytestmark = pytest.mark.slow

QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smol_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("smollm2-logs"), "--model", "default")
    server.wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sdk(smol_server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{smol_server.base_url}/v1", api_key="unused",
                       max_retries=0, timeout=600) as client:
        yield client


def test_model_card(sdk: openai.OpenAI) -> None:
    [model] = sdk.models.list().data
    assert model.id == "SmolLM2-135M-Instruct"
    card = model.model_dump()
    reader = gguf.GGUFReader(default_model_path())
    assert card["parameter_count"] == sum(int(t.n_elements) for t in reader.tensors)
    assert card["context_length"] == 8192
    assert card["format"] == "gguf"


def test_chat_uses_the_chat_template(sdk: openai.OpenAI) -> None:
    answer = sdk.chat.completions.create(model="SmolLM2-135M-Instruct", messages=QUESTION,
                                         max_tokens=12, temperature=0)
    assert "Paris" in (answer.choices[0].message.content or "")
    streamed = sdk.chat.completions.create(model="SmolLM2-135M-Instruct", messages=QUESTION,
                                           max_tokens=12, temperature=0, stream=True,
                                           stream_options={"include_usage": True})
    chunks = list(streamed)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer.choices[0].message.content
    assert chunks[-1].usage is not None and answer.usage is not None
    for count in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert getattr(chunks[-1].usage, count) == getattr(answer.usage, count)
    # The streamed request found the first one's prompt blocks in the prefix cache.
    details = chunks[-1].usage.prompt_tokens_details
    assert details is not None and details.cached_tokens is not None
    assert details.cached_tokens > 0


def test_completion_logprobs(smol_server: ServerProcess) -> None:
    body = httpx.post(f"{smol_server.base_url}/v1/completions", timeout=600, json={
        "prompt": "The capital of France is", "max_tokens": 1, "temperature": 0,
        "logprobs": 2}).json()
    logprobs = body["choices"][0]["logprobs"]
    assert logprobs["tokens"] == [" Paris"]
    assert max(logprobs["top_logprobs"][0], key=logprobs["top_logprobs"][0].get) == " Paris"


def test_tokenize_round_trip(smol_server: ServerProcess) -> None:
    text = "Ziggurat serves SmolLM2 — with UTF-8 ✓"
    tokens = httpx.post(f"{smol_server.base_url}/tokenize", json={"prompt": text}).json()
    assert tokens["max_model_len"] == 8192
    back = httpx.post(f"{smol_server.base_url}/detokenize", json={"tokens": tokens["tokens"]})
    assert back.json()["prompt"] == text
