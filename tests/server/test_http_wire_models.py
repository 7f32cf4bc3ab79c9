"""Every body the real server sends parses, in strict mode, into the client's response models,
declares no field those models lack, and comes back out of the model unchanged.

The models are the ones `ziggurat.types` exports (the protocol classes the server builds its
bodies from), so a field added on one side only fails here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, TypeVar

import httpx
import pytest
from fixtures_models import TinyModel
from pydantic import BaseModel
from server_process import ServerProcess, clean_environment
from ziggurat.types import (
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    DetokenizeResponse,
    ErrorResponse,
    GpuInfo,
    HealthStatus,
    Model,
    ModelList,
    ServerInfo,
    TokenizeResponse,
    Usage,
)

API_KEY = "wire-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MESSAGES = [{"role": "user", "content": "Hi"}]
GREEDY = {"model": "tiny", "temperature": 0, "ignore_eos": True, "max_tokens": 4}
TOOLS = [{"type": "function", "function": {"name": "get_weather",
                                            "parameters": {"type": "object", "properties": {}}}}]

ModelT = TypeVar("ModelT", bound=BaseModel)


@pytest.fixture(scope="module")
def wire_server(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[ServerProcess]:
    # No waiting room (--max-queue 0) so a 429 is reachable; 4 slots so that the requests below,
    # at most 2 sequences each, never collide with the slots of the one before.
    server = ServerProcess(tmp_path_factory.mktemp("wire-logs"),
                           "--model", str(tiny_model.gguf_path), "--served-model-name", "tiny",
                           "--max-num-seqs", "4", "--max-queue", "0", "--num-kv-blocks", "64",
                           env=clean_environment(ZIGGURAT_API_KEY=API_KEY))
    server.wait_ready()
    yield server
    server.stop()


@pytest.fixture()
def http(wire_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=wire_server.base_url, headers=AUTH, timeout=60.0) as client:
        yield client


def _undeclared_fields(value: Any, path: str) -> Iterator[str]:
    if isinstance(value, BaseModel):
        for name in value.model_extra or {}:
            yield f"{path}.{name}"
        for name in type(value).model_fields:
            yield from _undeclared_fields(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _undeclared_fields(item, f"{path}[{index}]")


def strict_parse(model: type[ModelT], body: str) -> ModelT:
    """Parse as the client does, but strictly: no coercion, no field the model does not declare
    (the models themselves keep unknown fields, for other servers), and the model writes the
    same JSON back (every field kept, null and absent told apart)."""
    parsed = model.model_validate_json(body, strict=True)
    undeclared = list(_undeclared_fields(parsed, model.__name__))
    assert not undeclared, f"fields the protocol models do not declare: {undeclared}"
    assert json.loads(parsed.model_dump_json(exclude_unset=True)) == json.loads(body)
    return parsed


def sse_payloads(body: str) -> list[str]:
    """The `data:` payloads of an SSE body, which must end with `[DONE]`."""
    payloads = [block.removeprefix("data: ") for block in body.strip("\n").split("\n\n")]
    assert payloads[-1] == "[DONE]", body[-200:]
    return payloads[:-1]


def test_strict_parse_rejects_an_undeclared_field() -> None:
    body = '{"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3, "surprise": 0}'
    with pytest.raises(AssertionError, match=r"Usage\.surprise"):
        strict_parse(Usage, body)
    nested = ('{"id": "x", "created": 0, "model": "m", "choices": '
              '[{"index": 0, "text": "", "logprobs": null, "finish_reason": null, "extra": 1}]}')
    with pytest.raises(AssertionError, match=r"choices\[0\]\.extra"):
        strict_parse(Completion, nested)


GETS: list[tuple[str, type[BaseModel]]] = [
    ("/health", HealthStatus),
    ("/v1/models", ModelList),
    ("/v1/models/tiny", Model),
    ("/v1/info", ServerInfo),
    ("/v1/gpu/info", GpuInfo),
]


@pytest.mark.parametrize(("path", "model"), GETS, ids=[path for path, _ in GETS])
def test_get_endpoints(http: httpx.Client, path: str, model: type[BaseModel]) -> None:
    response = http.get(path)
    assert response.status_code == 200, response.text
    strict_parse(model, response.text)


def test_tokenize_and_detokenize(http: httpx.Client) -> None:
    for body in ({"prompt": "Hello"}, {"messages": MESSAGES}):
        response = http.post("/tokenize", json=body)
        assert response.status_code == 200, response.text
        tokens = strict_parse(TokenizeResponse, response.text).tokens
    response = http.post("/detokenize", json={"tokens": tokens})
    assert response.status_code == 200, response.text
    strict_parse(DetokenizeResponse, response.text)


COMPLETIONS: dict[str, dict[str, Any]] = {
    "plain": {"prompt": "Hello"},
    "two-prompts": {"prompt": ["Hello", "Bye"]},
    "n2": {"prompt": "Hello", "n": 2},
    "logprobs": {"prompt": "Hello", "logprobs": 2},
    "echo": {"prompt": "Hello", "echo": True},
    "token-prompt": {"prompt": [5, 6, 7]},
}


@pytest.mark.parametrize("extra", COMPLETIONS.values(), ids=COMPLETIONS.keys())
def test_completions(http: httpx.Client, extra: dict[str, Any]) -> None:
    response = http.post("/v1/completions", json={**GREEDY, **extra})
    assert response.status_code == 200, response.text
    completion = strict_parse(Completion, response.text)
    assert completion.choices and completion.usage is not None


@pytest.mark.parametrize("extra", COMPLETIONS.values(), ids=COMPLETIONS.keys())
@pytest.mark.parametrize("include_usage", [False, True], ids=["no-usage", "usage"])
def test_completions_streaming(http: httpx.Client, extra: dict[str, Any],
                               include_usage: bool) -> None:
    body = {**GREEDY, **extra, "stream": True,
            "stream_options": {"include_usage": include_usage}}
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    chunks = [strict_parse(Completion, payload) for payload in sse_payloads(response.text)]
    assert (chunks[-1].usage is not None) == include_usage


CHATS: dict[str, dict[str, Any]] = {
    "plain": {},
    "n2": {"n": 2},
    "logprobs": {"logprobs": True, "top_logprobs": 2},
    # "none": the tools section would not fit the tiny model's 256-token window (answers with
    # calls are checked against the SDK's own models in test_tool_call_format.py).
    "tools": {"tools": TOOLS, "tool_choice": "none"},
    "no-generation-prompt": {"add_generation_prompt": False},
}


@pytest.mark.parametrize("extra", CHATS.values(), ids=CHATS.keys())
def test_chat_completions(http: httpx.Client, extra: dict[str, Any]) -> None:
    response = http.post("/v1/chat/completions", json={**GREEDY, "messages": MESSAGES, **extra})
    assert response.status_code == 200, response.text
    completion = strict_parse(ChatCompletion, response.text)
    assert completion.choices and completion.usage is not None


@pytest.mark.parametrize("extra", CHATS.values(), ids=CHATS.keys())
@pytest.mark.parametrize("include_usage", [False, True], ids=["no-usage", "usage"])
def test_chat_completions_streaming(http: httpx.Client, extra: dict[str, Any],
                                    include_usage: bool) -> None:
    body = {**GREEDY, "messages": MESSAGES, **extra, "stream": True,
            "stream_options": {"include_usage": include_usage}}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    chunks = [strict_parse(ChatCompletionChunk, payload)
              for payload in sse_payloads(response.text)]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert (chunks[-1].usage is not None) == include_usage


@pytest.mark.parametrize("stream", [False, True], ids=["body", "stream"])
def test_cached_responses_and_their_replays(http: httpx.Client, stream: bool) -> None:
    body = {**GREEDY, "messages": [{"role": "user", "content": f"wire cache {stream}"}],
            "cache": True, "stream": stream, "stream_options": {"include_usage": stream}
            if stream else None}
    for expected in (False, True):  # generated, then replayed
        response = http.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        if stream:
            last = [strict_parse(ChatCompletionChunk, payload)
                    for payload in sse_payloads(response.text)][-1]
        else:
            last = strict_parse(ChatCompletion, response.text)
        assert last.cached is expected and last.timings is not None


ERRORS: dict[str, tuple[str, str, Any, dict[str, str] | None, int]] = {
    "out-of-range": ("POST", "/v1/chat/completions",
                     {"messages": MESSAGES, "temperature": 5}, None, 400),
    "not-an-object": ("POST", "/v1/completions", ["x"], None, 400),
    "prompt-too-long": ("POST", "/v1/completions", {"prompt": [3] * 300}, None, 400),
    "unknown-token": ("POST", "/detokenize", {"tokens": [10**6]}, None, 400),
    "no-api-key": ("GET", "/v1/models", None, {"Authorization": ""}, 401),
    "unknown-model": ("GET", "/v1/models/nope", None, None, 404),
    "wrong-model": ("POST", "/v1/completions", {"model": "nope", "prompt": "x"}, None, 404),
    "unknown-route": ("GET", "/v1/nope", None, None, 404),
    "wrong-method": ("DELETE", "/v1/models", None, None, 405),
    "unsupported-field": ("POST", "/v1/chat/completions",
                          {"messages": MESSAGES, "prediction": {"type": "content"}}, None, 400),
    "image-part": ("POST", "/v1/chat/completions",
                   {"messages": [{"role": "user", "content": [
                       {"type": "image_url", "image_url": {"url": "x"}}]}]}, None, 400),
}


@pytest.mark.parametrize(("method", "path", "body", "headers", "status"), ERRORS.values(),
                         ids=ERRORS.keys())
def test_errors(http: httpx.Client, method: str, path: str, body: Any,
                headers: dict[str, str] | None, status: int) -> None:
    response = http.request(method, path, json=body, headers=headers)
    assert response.status_code == status, response.text
    error = strict_parse(ErrorResponse, response.text).error
    assert error.message and error.type


def test_overload_429(http: httpx.Client) -> None:
    # Many sequences, read no further than the first event: the slots stay taken (the server
    # cannot finish writing a body nobody reads) while a second request is refused.
    long_body = {**GREEDY, "prompt": "Hello", "n": 64, "max_tokens": 200, "stream": True}
    with http.stream("POST", "/v1/completions", json=long_body) as running:
        lines = running.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        refused = http.post("/v1/completions", json={**GREEDY, "prompt": "Hi"})
    assert refused.status_code == 429, refused.text
    error = strict_parse(ErrorResponse, refused.text).error
    assert error.code == "queue_full"
