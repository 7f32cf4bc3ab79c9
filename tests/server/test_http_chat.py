"""POST /v1/chat/completions against the real server process with the tiny random model."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from server_helpers import render_chatml
from tokenizers import Tokenizer

CONTEXT_WINDOW = 256


def chat(client: httpx.Client, messages: list[dict[str, Any]], **body: Any) -> dict[str, Any]:
    response = client.post("/v1/chat/completions",
                           json={"model": "tiny", "messages": messages, **body})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def chatml_tokens(tokenizer: Tokenizer, messages: list[dict[str, str]]) -> int:
    return len(tokenizer.encode(render_chatml(messages)).ids)


def test_response_shape_and_template_usage(client: httpx.Client,
                                           reference_tokenizer: Tokenizer) -> None:
    messages = [{"role": "user", "content": "Hello there"}]
    body = chat(client, messages, max_tokens=4, ignore_eos=True)
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == "tiny"
    assert isinstance(body["created"], int) and body["system_fingerprint"]
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["logprobs"] is None
    assert choice["finish_reason"] == "length"
    prompt_tokens = chatml_tokens(reference_tokenizer, messages)
    cached = body["usage"]["prompt_tokens_details"]["cached_tokens"]  # earlier tests' prefix
    assert body["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": 4,
                             "total_tokens": prompt_tokens + 4,
                             "prompt_tokens_details": {"cached_tokens": cached}}
    assert 0 <= cached < prompt_tokens


def test_multi_turn_with_system_and_assistant(client: httpx.Client,
                                              reference_tokenizer: Tokenizer) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Count: 1 2 3"},
    ]
    body = chat(client, messages, max_tokens=2, ignore_eos=True)
    assert body["usage"]["prompt_tokens"] == chatml_tokens(reference_tokenizer, messages)


def test_content_parts_equal_the_joined_string(client: httpx.Client) -> None:
    as_string = chat(client, [{"role": "user", "content": "Hello world"}],
                     max_tokens=5, temperature=0, ignore_eos=True)
    as_parts = chat(client, [{"role": "user", "content": [
        {"type": "text", "text": "Hello "}, {"type": "text", "text": "world"}]}],
        max_tokens=5, temperature=0, ignore_eos=True)
    for count in ("prompt_tokens", "completion_tokens", "total_tokens"):  # the prefix cache's
        assert as_parts["usage"][count] == as_string["usage"][count]  # share may differ
    assert as_parts["choices"][0]["message"] == as_string["choices"][0]["message"]


def test_no_max_tokens_runs_to_the_context_window(client: httpx.Client,
                                                  reference_tokenizer: Tokenizer) -> None:
    messages = [{"role": "user", "content": "Go"}]
    body = chat(client, messages, ignore_eos=True)
    prompt_tokens = chatml_tokens(reference_tokenizer, messages)
    assert body["usage"]["completion_tokens"] == CONTEXT_WINDOW - prompt_tokens
    assert body["choices"][0]["finish_reason"] == "length"


def test_max_completion_tokens_wins_over_max_tokens(client: httpx.Client) -> None:
    body = chat(client, [{"role": "user", "content": "Hi"}], max_tokens=9,
                max_completion_tokens=3, ignore_eos=True)
    assert body["usage"]["completion_tokens"] == 3


def test_logprobs_and_top_logprobs(client: httpx.Client) -> None:
    body = chat(client, [{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0,
                ignore_eos=True, logprobs=True, top_logprobs=2)
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == 4
    for entry in content:
        assert entry["logprob"] <= 0.0
        assert isinstance(entry["bytes"], list)
        assert len(entry["top_logprobs"]) == 2
        best = entry["top_logprobs"][0]
        assert best["logprob"] >= entry["top_logprobs"][1]["logprob"]
        assert entry["logprob"] == pytest.approx(best["logprob"], abs=1e-4)  # greedy


def test_top_logprobs_requires_logprobs(client: httpx.Client) -> None:
    response = client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "Hi"}], "top_logprobs": 2})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "top_logprobs"


def test_n_and_stop_on_chat(client: httpx.Client) -> None:
    body = chat(client, [{"role": "user", "content": "Hi"}], n=3, max_tokens=3,
                ignore_eos=True, stop=["never-appears"], seed=7)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert body["usage"]["completion_tokens"] == 9


def test_model_may_be_omitted(client: httpx.Client) -> None:
    response = client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1})
    assert response.status_code == 200
    assert response.json()["model"] == "tiny"


def test_empty_messages_is_400(client: httpx.Client) -> None:
    response = client.post("/v1/chat/completions", json={"model": "tiny", "messages": []})
    assert response.status_code == 400
    assert "messages" in response.json()["error"]["message"]
