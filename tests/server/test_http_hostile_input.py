"""Hostile or careless input: each a clear OpenAI-shaped 4xx naming the field, never a 500, and
the server keeps serving afterwards."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

LONE = "\ud800"  # valid JSON ("\ud800"), not encodable as UTF-8
MESSAGES = [{"role": "user", "content": "Hi"}]


def post_json(client: httpx.Client, path: str, body: Any) -> httpx.Response:
    # json.dumps escapes the surrogate as `\ud800`, as a hostile client would send it.
    return client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})


def assert_400(response: httpx.Response, param: str | None) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    if param is not None:
        assert param in error["message"]
    assert "Traceback" not in error["message"]
    return error


def assert_still_serving(client: httpx.Client) -> None:
    response = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2,
                                                    "ignore_eos": True})
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize("path, body, param", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a" + LONE}]},
     "messages.0.content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "ok"}, {"type": "text", "text": LONE}]}]},
     "messages.0.content.1.text"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi", "name": LONE}]},
     "messages.0.name"),
    ("/v1/chat/completions", {"messages": MESSAGES, "stream": True, "stop": ["x", LONE]},
     "stop.1"),
    ("/v1/chat/completions", {"messages": MESSAGES, "tools": [{"type": "function", "function": {
        "name": "f", "description": LONE, "parameters": {"type": "object"}}}]},
     "tools.0.function.description"),
    ("/v1/chat/completions", {"messages": MESSAGES, "vendor_extra": {"deep": [LONE]}},
     "vendor_extra.deep.0"),
    ("/v1/completions", {"prompt": LONE}, "prompt"),
    ("/v1/completions", {"prompt": ["fine", "bad" + LONE], "stream": True}, "prompt.1"),
    ("/v1/completions", {"prompt": "Hi", "stop": LONE}, "stop"),
    ("/v1/completions", {"prompt": "Hi", "user": LONE}, "user"),
    ("/v1/completions", {"prompt": "Hi", "logit_bias": {LONE: 1}}, "logit_bias.\\ud800"),
    ("/tokenize", {"prompt": LONE}, "prompt"),
    ("/tokenize", {"messages": [{"role": "user", "content": LONE}]}, "messages.0.content"),
    ("/detokenize", {"tokens": [1], "model": LONE}, "model"),
])
def test_string_not_encodable_as_utf8_is_400(client: httpx.Client, path: str, body: Any,
                                              param: str) -> None:
    error = assert_400(post_json(client, path, body), param)
    assert "UTF-8" in error["message"]
    assert_still_serving(client)


def test_body_bytes_not_utf8_is_400(client: httpx.Client) -> None:
    response = client.post("/v1/completions", content=b'{"prompt": "\xff\xfe"}',
                           headers={"content-type": "application/json"})
    assert_400(response, None)
    assert_still_serving(client)


@pytest.mark.parametrize("path, body, param", [
    ("/v1/chat/completions", {"messages": MESSAGES, "stream": "yes"}, "stream"),
    ("/v1/chat/completions", {"messages": MESSAGES, "stream": 1}, "stream"),
    ("/v1/chat/completions", {"messages": MESSAGES, "logprobs": "true"}, "logprobs"),
    ("/v1/chat/completions", {"messages": MESSAGES, "max_tokens": True}, "max_tokens"),
    ("/v1/chat/completions", {"messages": MESSAGES, "max_completion_tokens": "5"},
     "max_completion_tokens"),
    ("/v1/completions", {"prompt": "Hi", "max_tokens": 2.5}, "max_tokens"),  # 2.0 is an integer
    ("/v1/completions", {"prompt": "Hi", "n": "2"}, "n"),
    ("/v1/completions", {"prompt": "Hi", "seed": True}, "seed"),
    ("/v1/completions", {"prompt": "Hi", "echo": 0}, "echo"),
    ("/v1/completions", {"prompt": "Hi", "temperature": "0.5"}, "temperature"),
    ("/v1/completions", {"prompt": "Hi", "stream_options": {"include_usage": "yes"}},
     "stream_options.include_usage"),
    ("/v1/completions", {"prompt": [1, True]}, "prompt"),
    ("/v1/completions", {"prompt": 42}, "prompt"),
    ("/tokenize", {"prompt": "Hi", "add_special_tokens": "no"}, "add_special_tokens"),
    ("/detokenize", {"tokens": [1, 2.5]}, "tokens.1"),
])
def test_values_of_the_wrong_json_type_are_400(client: httpx.Client, path: str, body: Any,
                                                param: str) -> None:
    assert_400(client.post(path, json=body), param)
    assert_still_serving(client)


@pytest.mark.parametrize("message", [
    {"role": "user"},
    {"role": "user", "content": None},
    {"role": "system", "content": None},
    {"role": "tool", "tool_call_id": "call_1"},
    {"role": "assistant", "content": None},
])
def test_message_without_content_is_400(client: httpx.Client, message: dict[str, Any]) -> None:
    body = {"messages": [{"role": "user", "content": "Hi"}, message]}
    error = assert_400(client.post("/v1/chat/completions", json=body), "messages.1.content")
    assert "needs content" in error["message"]
    assert_still_serving(client)


def test_floats_accept_integers(client: httpx.Client) -> None:
    body = {"messages": MESSAGES, "max_tokens": 2, "temperature": 1, "top_p": 1,
            "presence_penalty": 0, "logit_bias": {"5": 1}}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text


def test_assistant_turn_with_tool_calls_may_have_null_content(client: httpx.Client) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    body = {"max_tokens": 2, "messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
    ]}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text


def test_model_default_is_retrievable_like_the_served_model(client: httpx.Client) -> None:
    # `model: "default"` works for generation, so the same name answers here.
    served = client.get("/v1/models/tiny")
    alias = client.get("/v1/models/default")
    assert served.status_code == alias.status_code == 200, alias.text
    assert alias.json() == served.json()
    assert alias.json()["id"] == "tiny"
    generated = client.post("/v1/completions", json={"model": "default", "prompt": "Hi",
                                                     "max_tokens": 1})
    assert generated.status_code == 200 and generated.json()["model"] == "tiny"
    missing = client.get("/v1/models/defaults")
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "model"
