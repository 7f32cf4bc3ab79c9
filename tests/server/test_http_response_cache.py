"""`cache: true` against the real server: a repeated reproducible request is served from the
response cache without running the engine; anything else runs."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from server_helpers import DONE, fresh_prompt, metric_value, parse_sse

GENERATED = "ziggurat_generation_tokens_total"
HITS = "ziggurat_response_cache_hits_total"
MISSES = "ziggurat_response_cache_misses_total"
UNCACHEABLE = "ziggurat_response_cache_uncacheable_total"
ENTRIES = "ziggurat_response_cache_entries"
BYTES = "ziggurat_response_cache_bytes"


def post(client: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(path, json={"model": "tiny", **body})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def stream(client: httpx.Client, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with client.stream("POST", path, json={"model": "tiny", "stream": True, **body}) as response:
        assert response.status_code == 200
        events = parse_sse("".join(response.iter_text()))
    assert events[-1] == DONE
    return events[:-1]


def metrics(client: httpx.Client) -> str:
    return client.get("/metrics").text


def generated_by_engine(client: httpx.Client) -> int:
    """The engine's own count of generated tokens (its stats, not the server's metrics)."""
    count: int = client.get("/v1/info").json()["engine"]["stats"]["generation_tokens"]
    return count


def without_identity(body: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in body.items() if key not in ("id", "created", "cached")}


def chat_request(**extra: Any) -> dict[str, Any]:
    content = " ".join(str(t) for t in fresh_prompt(6))
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 6,
            "ignore_eos": True, "cache": True, **extra}


def test_a_repeated_greedy_request_is_served_without_the_engine(client: httpx.Client) -> None:
    request = chat_request(temperature=0)
    first = post(client, "/v1/chat/completions", request)
    before, engine_before = metrics(client), generated_by_engine(client)
    again = post(client, "/v1/chat/completions", request)
    after, engine_after = metrics(client), generated_by_engine(client)

    assert first["cached"] is False and again["cached"] is True
    assert without_identity(again) == without_identity(first)  # content, usage, timings
    assert again["id"] != first["id"]
    assert metric_value(after, GENERATED) == metric_value(before, GENERATED)
    assert engine_after == engine_before
    assert metric_value(after, HITS) == metric_value(before, HITS) + 1
    assert metric_value(after, MISSES) == metric_value(before, MISSES)
    assert metric_value(after, ENTRIES) >= 1 and metric_value(after, BYTES) > 0


def test_a_fresh_response_is_counted_as_a_miss_and_stored(client: httpx.Client) -> None:
    before = metrics(client)
    post(client, "/v1/completions", {"prompt": fresh_prompt(5), "max_tokens": 2,
                                      "temperature": 0, "cache": True})
    after = metrics(client)
    assert metric_value(after, MISSES) == metric_value(before, MISSES) + 1
    assert metric_value(after, BYTES) > metric_value(before, BYTES)


def test_a_sampled_request_without_seed_always_runs(client: httpx.Client) -> None:
    request = chat_request(temperature=1.0)
    before = metrics(client)
    first = post(client, "/v1/chat/completions", request)
    again = post(client, "/v1/chat/completions", request)
    after = metrics(client)
    assert first["cached"] is False and again["cached"] is False
    assert metric_value(after, GENERATED) == metric_value(before, GENERATED) + 12
    assert metric_value(after, UNCACHEABLE) == metric_value(before, UNCACHEABLE) + 2
    assert metric_value(after, HITS) == metric_value(before, HITS)


def test_a_seeded_sampled_request_is_served_from_the_cache(client: httpx.Client) -> None:
    request = chat_request(temperature=1.0, seed=1234, n=2)
    first = post(client, "/v1/chat/completions", request)
    before = metrics(client)
    again = post(client, "/v1/chat/completions", request)
    assert again["cached"] is True
    assert again["choices"] == first["choices"]
    assert metric_value(metrics(client), GENERATED) == metric_value(before, GENERATED)


@pytest.mark.parametrize("change", [{"max_tokens": 5}, {"stop": ["zz"]}, {"seed": 7},
                                    {"logprobs": True}, {"n": 2}, {"presence_penalty": 0.5}])
def test_any_parameter_that_shapes_the_output_misses(client: httpx.Client,
                                                     change: dict[str, Any]) -> None:
    request = chat_request(temperature=0)
    post(client, "/v1/chat/completions", request)
    before = metrics(client)
    changed = post(client, "/v1/chat/completions", {**request, **change})
    assert changed["cached"] is False
    assert metric_value(metrics(client), GENERATED) > metric_value(before, GENERATED)


def test_without_cache_nothing_is_cached_nor_marked(client: httpx.Client) -> None:
    request = chat_request(temperature=0)
    post(client, "/v1/chat/completions", request)
    plain = post(client, "/v1/chat/completions", {**request, "cache": False})
    assert "cached" not in plain


def test_a_streamed_hit_replays_the_same_chunks(client: httpx.Client) -> None:
    request = chat_request(temperature=0, n=2, logprobs=True, top_logprobs=2,
                           stream_options={"include_usage": True})
    first = stream(client, "/v1/chat/completions", request)
    before = metrics(client)
    again = stream(client, "/v1/chat/completions", request)
    assert metric_value(metrics(client), GENERATED) == metric_value(before, GENERATED)
    assert [without_identity(c) for c in again] == [without_identity(c) for c in first]
    assert len({c["id"] for c in again}) == 1 and again[0]["id"] != first[0]["id"]
    # Only the last chunk says whether the stream came from the cache.
    assert first[-1]["cached"] is False and again[-1]["cached"] is True
    assert all("cached" not in chunk for chunk in again[:-1])


def test_a_completion_stream_is_replayed_too(client: httpx.Client) -> None:
    request = {"prompt": fresh_prompt(8), "max_tokens": 4, "temperature": 0, "echo": True,
               "cache": True}
    first = stream(client, "/v1/completions", request)
    again = stream(client, "/v1/completions", request)
    assert [without_identity(c) for c in again] == [without_identity(c) for c in first]
    assert again[-1]["cached"] is True


def test_a_stream_the_client_left_is_not_stored(client: httpx.Client, tiny_server: Any) -> None:
    request = {"prompt": fresh_prompt(4), "max_tokens": 200, "ignore_eos": True,
               "temperature": 0, "cache": True}
    with httpx.Client(base_url=tiny_server.base_url, timeout=60.0) as leaver, leaver.stream(
            "POST", "/v1/completions", json={**request, "stream": True}) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["text"]:
                break  # leave after the first text
    complete = stream(client, "/v1/completions", request)
    assert complete[-1]["cached"] is False  # the cut-short stream was not kept
    again = stream(client, "/v1/completions", request)
    assert again[-1]["cached"] is True
