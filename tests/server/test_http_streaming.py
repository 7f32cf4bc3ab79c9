"""Server-Sent Events framing, compared with what OpenAI sends."""

from __future__ import annotations

from typing import Any

import httpx
from server_helpers import DONE, chat_text, parse_sse

MESSAGES = [{"role": "user", "content": "Tell me a story"}]


def stream_body(client: httpx.Client, path: str, body: dict[str, Any]) -> tuple[httpx.Response, str]:
    with client.stream("POST", path, json={"model": "tiny", "stream": True, **body}) as response:
        text = "".join(response.iter_text())
    return response, text


def test_chat_stream_framing_with_usage(client: httpx.Client) -> None:
    response, text = stream_body(client, "/v1/chat/completions", {
        "messages": MESSAGES, "max_tokens": 6, "ignore_eos": True, "temperature": 0,
        "stream_options": {"include_usage": True}})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    # Proxies must neither cache nor buffer the stream.
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    events = parse_sse(text)
    assert events[-1] == DONE
    chunks = events[:-1]
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["created"] for c in chunks}) == 1

    first = chunks[0]
    assert first["choices"] == [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                 "logprobs": None, "finish_reason": None}]
    *content, finish, usage = chunks[1:]
    for chunk in content:
        [choice] = chunk["choices"]
        assert set(choice["delta"]) == {"content"}
        assert choice["finish_reason"] is None and choice["logprobs"] is None
    assert finish["choices"] == [{"index": 0, "delta": {}, "logprobs": None,
                                  "finish_reason": "length"}]
    # With include_usage every chunk carries "usage": null, the last one the totals.
    assert all("usage" in c and c["usage"] is None for c in chunks[:-1])
    assert usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == 6
    assert usage["usage"]["total_tokens"] == usage["usage"]["prompt_tokens"] + 6


def test_chat_stream_matches_the_non_streamed_answer(client: httpx.Client) -> None:
    body = {"messages": MESSAGES, "max_tokens": 12, "ignore_eos": True, "temperature": 0}
    _, text = stream_body(client, "/v1/chat/completions", body)
    whole = client.post("/v1/chat/completions", json={"model": "tiny", **body}).json()
    assert chat_text(parse_sse(text)) == whole["choices"][0]["message"]["content"]


def test_chat_stream_without_usage_has_no_usage_key(client: httpx.Client) -> None:
    _, text = stream_body(client, "/v1/chat/completions",
                          {"messages": MESSAGES, "max_tokens": 3, "ignore_eos": True})
    events = parse_sse(text)
    assert events[-1] == DONE
    assert all("usage" not in chunk for chunk in events[:-1])
    assert all(chunk["choices"] for chunk in events[:-1])


def test_chat_stream_several_choices(client: httpx.Client) -> None:
    _, text = stream_body(client, "/v1/chat/completions", {
        "messages": MESSAGES, "max_tokens": 4, "ignore_eos": True, "n": 2,
        "logprobs": True, "top_logprobs": 1})
    chunks = parse_sse(text)[:-1]
    for index in (0, 1):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == index]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert mine[-1]["finish_reason"] == "length" and mine[-1]["delta"] == {}
        streamed_logprobs = [entry for choice in mine[1:-1]
                             for entry in (choice["logprobs"] or {}).get("content", [])]
        assert len(streamed_logprobs) == 4
        assert all(len(entry["top_logprobs"]) == 1 for entry in streamed_logprobs)


def test_completion_stream_framing_and_text(client: httpx.Client) -> None:
    body = {"prompt": "Once upon", "max_tokens": 8, "ignore_eos": True, "temperature": 0}
    response, text = stream_body(client, "/v1/completions", {
        **body, "stream_options": {"include_usage": True}})
    assert response.status_code == 200
    events = parse_sse(text)
    assert events[-1] == DONE
    *chunks, usage = events[:-1]
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 8
    whole = client.post("/v1/completions", json={"model": "tiny", **body}).json()
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]


def test_completion_stream_echo_and_several_prompts(client: httpx.Client) -> None:
    _, text = stream_body(client, "/v1/completions", {
        "prompt": ["Hello", "World"], "echo": True, "max_tokens": 3, "ignore_eos": True})
    chunks = parse_sse(text)[:-1]
    for index, prompt in enumerate(["Hello", "World"]):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == index]
        assert mine[0]["text"] == prompt
        assert mine[-1]["finish_reason"] == "length"


def test_validation_error_before_streaming_is_plain_json(client: httpx.Client) -> None:
    response, text = stream_body(client, "/v1/completions",
                                 {"prompt": [7] * 300, "max_tokens": 4})
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/json")
    assert "context window" in text
