"""OpenAI request fields Ziggurat does not implement get a 400 naming the field; the
bookkeeping fields that cannot change a response are accepted."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
COMPLETION = {"model": "tiny", "prompt": "Hi", "max_tokens": 1}

REFUSED: list[tuple[str, Any]] = [
    ("audio", {"voice": "alloy", "format": "wav"}),
    ("modalities", ["text", "audio"]),
    ("modalities", ["audio"]),
    ("prediction", {"type": "content", "content": "Hello"}),
    ("web_search_options", {}),
    ("reasoning_effort", "low"),
    ("verbosity", "low"),
    ("store", True),
    ("service_tier", "flex"),
]
ACCEPTED: list[tuple[str, Any]] = [
    ("modalities", ["text"]),
    ("store", False),
    ("service_tier", "auto"),
    ("service_tier", "default"),
    ("metadata", {"team": "search"}),
    ("user", "user-1"),
    ("safety_identifier", "hash-1"),
    ("prompt_cache_key", "conversation-1"),
    ("audio", None),  # null is "not given", as the openai SDK means it
]


@pytest.mark.parametrize("path, base", [("/v1/chat/completions", CHAT),
                                        ("/v1/completions", COMPLETION)], ids=["chat", "legacy"])
@pytest.mark.parametrize("field, value", REFUSED, ids=[f"{f}={v}" for f, v in REFUSED])
def test_unimplemented_fields_are_refused_by_name(client: httpx.Client, path: str,
                                                  base: dict[str, Any], field: str,
                                                  value: Any) -> None:
    response = client.post(path, json={**base, field: value})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == field
    assert error["code"] == "unsupported_parameter"
    assert error["message"].startswith(f"{field}: ")


@pytest.mark.parametrize("field, value", ACCEPTED, ids=[f"{f}={v}" for f, v in ACCEPTED])
def test_bookkeeping_fields_are_accepted(client: httpx.Client, field: str, value: Any) -> None:
    response = client.post("/v1/chat/completions", json={**CHAT, field: value})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("part", [
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
    {"type": "file", "file": {"file_id": "file-1"}},
], ids=lambda part: part["type"])
def test_non_text_content_parts_are_refused_by_type(client: httpx.Client,
                                                    part: dict[str, Any]) -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, part]}]
    response = client.post("/v1/chat/completions", json={**CHAT, "messages": messages})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "messages.0.content"
    assert f"{part['type']} content parts are not supported" in error["message"]
