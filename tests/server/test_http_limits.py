"""Request size limits: a body over --max-request-bytes is a 413 before it is parsed, and a
huge prompt is tokenised off the event loop, so the server keeps answering meanwhile."""

from __future__ import annotations

import json
import select
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
from server_process import ServerProcess
from test_http_hostile_input import assert_still_serving
from ziggurat_server.settings import DEFAULT_MAX_REQUEST_BYTES


def assert_413(response: httpx.Response) -> None:
    assert response.status_code == 413, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "request_too_large"
    assert str(DEFAULT_MAX_REQUEST_BYTES) in error["message"]
    assert response.headers.get("x-request-id")


def padded_body(size: int) -> bytes:
    """A valid completions body of exactly `size` bytes (the padding is the `user` field)."""
    head = b'{"prompt": "Hi", "max_tokens": 1, "user": "'
    return head + b"x" * (size - len(head) - 2) + b'"}'


def test_body_over_the_limit_is_413_by_its_length(client: httpx.Client) -> None:
    response = client.post("/v1/completions", content=padded_body(DEFAULT_MAX_REQUEST_BYTES + 1),
                           headers={"content-type": "application/json"})
    assert_413(response)
    assert_still_serving(client)


def test_body_at_the_limit_is_served(client: httpx.Client) -> None:
    response = client.post("/v1/completions", content=padded_body(DEFAULT_MAX_REQUEST_BYTES),
                           headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text


def _chunks(body: bytes, size: int = 65536) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start:start + size]


def test_chunked_body_over_the_limit_is_413(tiny_server: ServerProcess) -> None:
    # A generator body goes out with Transfer-Encoding: chunked, without a Content-Length.
    with httpx.Client(base_url=tiny_server.base_url, timeout=60.0) as client:
        response = client.post("/v1/completions",
                               content=_chunks(padded_body(DEFAULT_MAX_REQUEST_BYTES + 1)),
                               headers={"content-type": "application/json"})
        assert "content-length" not in response.request.headers
        assert_413(response)
    with httpx.Client(base_url=tiny_server.base_url, timeout=60.0) as client:
        assert_still_serving(client)


def test_chunked_body_under_the_limit_is_served(client: httpx.Client) -> None:
    body = json.dumps({"prompt": "Hi", "max_tokens": 2, "ignore_eos": True}).encode()
    response = client.post("/v1/completions", content=_chunks(body, 7),
                           headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 2


def test_huge_prompt_under_the_body_limit_is_a_clear_400(tiny_server: ServerProcess,
                                                         client: httpx.Client) -> None:
    """A 3.5 MB prompt is sent whole on its own connection and /health is asked meanwhile until
    the prompt's answer arrives: a 400 naming the prompt and the context window. (That /health
    is answered *while* the prompt is tokenised is proved in-process, test_app_hardening.py.)"""
    prompt = "the quick brown fox jumps over the lazy dog " * 80_000  # 3.5 MB
    body = json.dumps({"prompt": prompt, "max_tokens": 1}).encode()
    assert len(body) <= DEFAULT_MAX_REQUEST_BYTES
    url = urlsplit(tiny_server.base_url)
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: {url.netloc}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode()
    with socket.create_connection((url.hostname, url.port), timeout=120) as huge:
        huge.sendall(head + body)
        health_answers = 0
        while not select.select([huge], [], [], 0)[0]:
            assert client.get("/health").status_code == 200
            health_answers += 1
        answer = b""
        while chunk := huge.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] == b"400", answer[:500]
    error = json.loads(rest.partition(b"\r\n\r\n")[2])["error"]
    assert error["param"] == "prompt"
    assert "context window" in error["message"]
    assert health_answers >= 1
    assert_still_serving(client)
