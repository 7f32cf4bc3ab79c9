"""OpenAI-shaped errors with the right status codes, and request ids on every response."""

from __future__ import annotations

from typing import Any

import httpx
import pytest


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in error["message"]
    assert response.headers.get("x-request-id")
    return error


def test_bad_json_is_400(client: httpx.Client) -> None:
    response = client.post("/v1/chat/completions", content=b'{"messages": [',
                           headers={"content-type": "application/json"})
    error = assert_openai_error(response, 400)
    assert error["type"] == "invalid_request_error"
    assert "JSON" in error["message"]


def test_body_that_is_not_an_object_is_400(client: httpx.Client) -> None:
    response = client.post("/v1/completions", json=["not", "an", "object"])
    assert_openai_error(response, 400)


@pytest.mark.parametrize("field, value", [
    ("temperature", "hot"),
    ("temperature", 2.5),
    ("top_p", 0),
    ("max_tokens", 0),
    ("n", 0),
    ("logprobs", 21),
    ("presence_penalty", -3),
    ("stop", 5),
])
def test_invalid_parameter_names_the_field(client: httpx.Client, field: str, value: Any) -> None:
    response = client.post("/v1/completions", json={"prompt": "Hi", field: value})
    error = assert_openai_error(response, 400)
    assert error["param"] == field
    assert field in error["message"]


def test_missing_required_field(client: httpx.Client) -> None:
    response = client.post("/v1/chat/completions", json={"model": "tiny"})
    error = assert_openai_error(response, 400)
    assert "messages" in error["message"]


def test_unknown_route_is_404(client: httpx.Client) -> None:
    error = assert_openai_error(client.get("/v1/nothing-here"), 404)
    assert "/v1/nothing-here" in error["message"]


def test_wrong_method_is_405(client: httpx.Client) -> None:
    assert_openai_error(client.get("/v1/chat/completions"), 405)


def test_unknown_model_is_404(client: httpx.Client) -> None:
    response = client.post("/v1/completions", json={"model": "gpt-9", "prompt": "Hi"})
    error = assert_openai_error(response, 404)
    assert error["code"] == "model_not_found"
    assert error["param"] == "model"
    assert_openai_error(client.get("/v1/models/gpt-9"), 404)


def test_request_id_is_echoed_or_generated(client: httpx.Client) -> None:
    echoed = client.get("/health", headers={"X-Request-Id": "my-trace-42"})
    assert echoed.headers["x-request-id"] == "my-trace-42"
    first = client.get("/v1/models").headers["x-request-id"]
    second = client.get("/v1/models").headers["x-request-id"]
    assert first and second and first != second
    error = client.get("/nowhere", headers={"X-Request-Id": "abc"})
    assert error.headers["x-request-id"] == "abc"


def test_unsafe_client_request_id_is_replaced(client: httpx.Client) -> None:
    response = client.get("/health", headers={"X-Request-Id": "bad id with spaces"})
    assert response.headers["x-request-id"] != "bad id with spaces"
    assert response.headers["x-request-id"]
