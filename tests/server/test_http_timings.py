"""`timings` on every response and on the last stream chunk, checked against the usage the
same response reports and against the engine's prefix cache."""

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest
from server_helpers import DONE, fresh_prompt, parse_sse

BLOCK_SIZE = 16  # the session server's default --block-size

def post(client: httpx.Client, path: str, **body: Any) -> dict[str, Any]:
    response = client.post(path, json={"model": "tiny", **body})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def stream(client: httpx.Client, path: str, **body: Any) -> list[dict[str, Any]]:
    with client.stream("POST", path, json={"model": "tiny", "stream": True, **body}) as response:
        assert response.status_code == 200
        events = parse_sse("".join(response.iter_text()))
    assert events[-1] == DONE
    return events[:-1]


def check_consistent(timings: dict[str, Any], usage: dict[str, Any]) -> None:
    """What must hold between the timings and the usage of one response."""
    assert timings["prompt_n"] + timings["cache_n"] == usage["prompt_tokens"]
    assert timings["cache_n"] == usage["prompt_tokens_details"]["cached_tokens"]
    assert timings["predicted_n"] == usage["completion_tokens"]
    for name in ("queue_ms", "prompt_ms", "predicted_ms", "ttft_ms", "total_ms"):
        assert timings[name] >= 0, name
    assert timings["ttft_ms"] <= timings["total_ms"]
    # The stages add up (each figure is rounded to a microsecond).
    assert math.isclose(timings["queue_ms"] + timings["prompt_ms"], timings["ttft_ms"],
                        abs_tol=0.01)
    assert math.isclose(timings["ttft_ms"] + timings["predicted_ms"], timings["total_ms"],
                        abs_tol=0.01)
    if timings["predicted_ms"] > 0 and timings["predicted_n"] > 1:
        assert math.isclose(timings["predicted_per_second"],
                            (timings["predicted_n"] - 1) * 1000 / timings["predicted_ms"],
                            rel_tol=1e-3)
        # Per-token milliseconds are rounded to a microsecond too: a fast step's 0.40155 is 0.402.
        assert math.isclose(timings["predicted_per_token_ms"],
                            timings["predicted_ms"] / (timings["predicted_n"] - 1), rel_tol=1e-3,
                            abs_tol=0.001)
    if timings["prompt_ms"] > 0 and timings["prompt_n"] > 0:
        assert math.isclose(timings["prompt_per_second"],
                            timings["prompt_n"] * 1000 / timings["prompt_ms"], rel_tol=1e-3)


def test_chat_response_carries_timings(client: httpx.Client) -> None:
    body = post(client, "/v1/chat/completions",
                messages=[{"role": "user", "content": "timings for a chat"}], max_tokens=5,
                ignore_eos=True)
    check_consistent(body["timings"], body["usage"])
    assert body["timings"]["predicted_n"] == 5
    assert "cached" not in body  # only when the response cache was asked for


def test_completion_with_several_prompts_and_samples(client: httpx.Client) -> None:
    body = post(client, "/v1/completions", prompt=[fresh_prompt(5), fresh_prompt(9)], n=2,
                max_tokens=3, ignore_eos=True)
    check_consistent(body["timings"], body["usage"])
    assert body["timings"]["predicted_n"] == 2 * 2 * 3


def test_cache_n_is_the_prefix_cache_hit_of_a_repeated_prompt(client: httpx.Client) -> None:
    prompt = fresh_prompt(70)
    first = post(client, "/v1/completions", prompt=prompt, max_tokens=2, ignore_eos=True)
    again = post(client, "/v1/completions", prompt=prompt, max_tokens=2, ignore_eos=True)
    assert first["timings"]["cache_n"] == 0
    assert first["timings"]["prompt_n"] == 70
    # The second request finds the first one's full blocks in the prefix cache.
    assert again["timings"]["cache_n"] == (70 // BLOCK_SIZE) * BLOCK_SIZE
    assert again["timings"]["prompt_n"] == 70 - again["timings"]["cache_n"]
    check_consistent(first["timings"], first["usage"])
    check_consistent(again["timings"], again["usage"])


def test_stream_without_usage_times_the_finishing_chunk(client: httpx.Client) -> None:
    chunks = stream(client, "/v1/chat/completions",
                    messages=[{"role": "user", "content": "stream timings"}], max_tokens=4,
                    ignore_eos=True)
    *before, last = chunks
    assert last["choices"][0]["finish_reason"] == "length"
    assert all("timings" not in chunk for chunk in before)
    assert last["timings"]["predicted_n"] == 4
    assert last["timings"]["ttft_ms"] <= last["timings"]["total_ms"]


@pytest.mark.parametrize("path, request_body", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "usage and timings"}]}),
    ("/v1/completions", {"prompt": "usage and timings"}),
])
def test_stream_with_usage_times_the_usage_chunk(client: httpx.Client, path: str,
                                                 request_body: dict[str, Any]) -> None:
    chunks = stream(client, path, **request_body, max_tokens=4, ignore_eos=True, n=2,
                    stream_options={"include_usage": True})
    *before, last = chunks
    assert last["choices"] == []
    assert all("timings" not in chunk for chunk in before)
    check_consistent(last["timings"], last["usage"])
    assert last["timings"]["predicted_n"] == 8
