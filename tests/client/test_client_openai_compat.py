"""Replay response and stream bodies in the exact shape OpenAI's API returns through the client.

The fixtures carry fields our models do not declare (`service_tier`, `refusal`, `annotations`,
`prompt_tokens_details`, `obfuscation`...): they must be kept, never rejected.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import respx
from client_helpers import split_every
from ziggurat import (
    APIError,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    NotFoundError,
    RateLimitError,
)

FIXTURES = Path(__file__).parent / "fixtures"
OPENAI = "https://api.openai.com/v1"
MESSAGES = [{"role": "user", "content": "Say hello"}]


def fixture_json(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


@pytest.fixture
def client() -> Client:
    return Client(base_url=OPENAI, api_key="sk-test", max_retries=0)


def test_chat_completion_keeps_undeclared_fields(client: Client) -> None:
    with respx.mock(base_url=OPENAI) as router:
        router.post("/chat/completions").respond(200, json=fixture_json("chat_completion.json"))
        reply = client.chat.completions.create("gpt-4o", MESSAGES)
    assert reply.id == "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG"
    content = reply.choices[0].message.content
    assert content is not None and content.startswith("The image shows a wooden boardwalk")
    assert reply.choices[0].finish_reason == "stop"
    assert reply.system_fingerprint == "fp_fc9f1d7035"
    assert reply.model_extra == {"service_tier": "default"}
    assert reply.choices[0].message.model_extra == {"refusal": None, "annotations": []}
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.total_tokens) == (1117, 1163)
    details = reply.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens == 0
    assert details.model_extra == {"audio_tokens": 0}
    # Nothing is lost: dumping gives back the server's body.
    assert reply.model_dump(exclude_unset=True) == fixture_json("chat_completion.json")


def test_chat_completion_logprobs(client: Client) -> None:
    with respx.mock(base_url=OPENAI) as router:
        router.post("/chat/completions").respond(
            200, json=fixture_json("chat_completion_logprobs.json")
        )
        reply = client.chat.completions.create(
            "gpt-4o-mini", MESSAGES, logprobs=True, top_logprobs=2
        )
    logprobs = reply.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert [token.token for token in logprobs.content] == ["Hello", "!"]
    assert logprobs.content[0].bytes == [72, 101, 108, 108, 111]
    assert [top.token for top in logprobs.content[1].top_logprobs] == ["!", " there"]
    assert logprobs.model_extra == {"refusal": None}


def test_chat_completion_tool_calls(client: Client) -> None:
    with respx.mock(base_url=OPENAI) as router:
        router.post("/chat/completions").respond(
            200, json=fixture_json("chat_completion_tool_calls.json")
        )
        reply = client.chat.completions.create(
            "gpt-4o-mini",
            MESSAGES,
            tools=[{"type": "function", "function": {"name": "get_current_weather"}}],
        )
    message = reply.choices[0].message
    assert message.content is None
    assert message.tool_calls is not None
    [call] = message.tool_calls
    assert (call.id, call.type) == ("call_abc123", "function")
    assert call.function.name == "get_current_weather"
    assert json.loads(call.function.arguments) == {"location": "Boston, MA"}
    assert reply.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("chunk_size", [7, 64, 100_000])
def test_chat_stream_reassembles_the_text(client: Client, chunk_size: int) -> None:
    body = fixture_bytes("chat_completion_stream.txt")
    with respx.mock(base_url=OPENAI) as router:
        router.post("/chat/completions").mock(
            return_value=httpx.Response(200, content=iter(split_every(body, chunk_size)))
        )
        chunks = list(
            client.chat.completions.create(
                "gpt-4o-mini", MESSAGES, stream=True, stream_options={"include_usage": True}
            )
        )
    text = "".join(choice.delta.content or "" for chunk in chunks for choice in chunk.choices)
    assert text == "Hello! How can I assist you today?"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.model_extra == {"refusal": None}
    assert chunks[0].model_extra is not None
    assert chunks[0].model_extra["obfuscation"] == "Ft2Bz"
    assert chunks[-2].choices[0].finish_reason == "stop"
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None and usage_chunk.usage.total_tokens == 29


def test_chat_stream_error_payload_raises(client: Client) -> None:
    with respx.mock(base_url=OPENAI) as router:
        router.post("/chat/completions").respond(
            200, content=fixture_bytes("chat_completion_stream_error.txt")
        )
        received = []
        with pytest.raises(APIError) as caught:
            for chunk in client.chat.completions.create("gpt-4o-mini", MESSAGES, stream=True):
                received.append(chunk.choices[0].delta.content)
    assert received == ["", "Once"]
    assert caught.value.message.startswith("The server had an error while processing")
    assert caught.value.type == "server_error"


def test_legacy_completion_with_logprobs(client: Client) -> None:
    with respx.mock(base_url=OPENAI) as router:
        router.post("/completions").respond(200, json=fixture_json("completion.json"))
        completion = client.completions.create(
            "gpt-3.5-turbo-instruct", "Say this is a test", logprobs=1
        )
    choice = completion.choices[0]
    assert choice.text == "\n\nThis is indeed a test"
    assert choice.logprobs is not None
    assert choice.logprobs.tokens[3] == " indeed"
    assert choice.logprobs.text_offset == [16, 18, 22, 25, 32, 34]
    assert choice.logprobs.top_logprobs is not None
    assert choice.logprobs.top_logprobs[1] == {"This": -0.1845}


def test_legacy_completion_stream(client: Client) -> None:
    with respx.mock(base_url=OPENAI) as router:
        router.post("/completions").respond(200, content=fixture_bytes("completion_stream.txt"))
        chunks = list(client.completions.create("gpt-3.5-turbo-instruct", "Say", stream=True))
    assert "".join(chunk.choices[0].text for chunk in chunks) == "\n\nThis is a test."
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_models_list(client: Client) -> None:
    with respx.mock(base_url=OPENAI) as router:
        router.get("/models").respond(200, json=fixture_json("models_list.json"))
        models = client.models.list()
    assert [model.id for model in models.data][0] == "gpt-4o-mini"
    assert models.data[2].owned_by == "user-abc123"
    assert models.data[0].context_length is None


@pytest.mark.parametrize(
    ("status", "fixture", "error_class", "code"),
    [
        (404, "error_model_not_found.json", NotFoundError, "model_not_found"),
        (401, "error_invalid_api_key.json", AuthenticationError, "invalid_api_key"),
        (429, "error_rate_limit.json", RateLimitError, "rate_limit_exceeded"),
        (400, "error_context_length.json", BadRequestError, "context_length_exceeded"),
    ],
)
def test_openai_errors(
    client: Client, status: int, fixture: str, error_class: type[APIError], code: str
) -> None:
    body = fixture_json(fixture)
    with respx.mock(base_url=OPENAI) as router:
        router.post("/chat/completions").respond(
            status, json=body, headers={"x-request-id": "req_0123abcd"}
        )
        with pytest.raises(error_class) as caught:
            client.chat.completions.create("gpt-4o-mini", MESSAGES)
    assert caught.value.message == body["error"]["message"]
    assert caught.value.code == code
    assert caught.value.request_id == "req_0123abcd"


@pytest.mark.anyio
async def test_async_client_replays_the_same_stream() -> None:
    body = fixture_bytes("chat_completion_stream.txt")
    with respx.mock(base_url=OPENAI) as router:
        router.post("/chat/completions").respond(200, content=body)
        async with AsyncClient(base_url=OPENAI, api_key="sk-test") as client:
            stream = await client.chat.completions.create("gpt-4o-mini", MESSAGES, stream=True)
            pieces = [
                choice.delta.content or "" async for chunk in stream for choice in chunk.choices
            ]
    assert "".join(pieces) == "Hello! How can I assist you today?"
