"""Many concurrent streaming requests all complete, each with the right usage."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from server_helpers import DONE, parse_sse, render_chatml
from tokenizers import Tokenizer

NUM_REQUESTS = 64
MAX_TOKENS = 8


async def stream_chat(http: httpx.AsyncClient, index: int) -> list[Any]:
    body = {"model": "tiny", "stream": True, "max_tokens": MAX_TOKENS, "ignore_eos": True,
            "messages": [{"role": "user", "content": f"Request number {index}" + " x" * (index % 9)}],
            "stream_options": {"include_usage": True}}
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        text = "".join([chunk async for chunk in response.aiter_text()])
    return parse_sse(text)


def test_64_concurrent_streams_complete_with_correct_usage(
        tiny_server: Any, reference_tokenizer: Tokenizer) -> None:
    async def run_all() -> list[list[Any]]:
        limits = httpx.Limits(max_connections=NUM_REQUESTS)
        async with httpx.AsyncClient(base_url=tiny_server.base_url, timeout=120.0,
                                     limits=limits) as http:
            return await asyncio.gather(*(stream_chat(http, i) for i in range(NUM_REQUESTS)))

    results = asyncio.run(run_all())
    assert len(results) == NUM_REQUESTS
    ids = set()
    for index, events in enumerate(results):
        assert events[-1] == DONE
        usage = events[-2]["usage"]
        content = f"Request number {index}" + " x" * (index % 9)
        prompt = render_chatml([{"role": "user", "content": content}])
        assert usage["prompt_tokens"] == len(reference_tokenizer.encode(prompt).ids)
        assert usage["completion_tokens"] == MAX_TOKENS
        finishes = [c["choices"][0]["finish_reason"] for c in events[:-2]]
        assert finishes[-1] == "length" and finishes.count("length") == 1
        ids.add(events[0]["id"])
    assert len(ids) == NUM_REQUESTS
    stats = httpx.get(f"{tiny_server.base_url}/v1/info").json()["engine"]["stats"]
    assert stats["running"] == 0 and stats["kv_blocks_used"] == 0
