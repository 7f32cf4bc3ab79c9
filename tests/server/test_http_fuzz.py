"""A fuzz pass over the request bodies against the real server: bodies generated from the
request models' JSON schema (schemathesis's generation, valid and invalid), then broken as a
careless or hostile client would (a value of the wrong type at any depth, a truncated body,
huge numbers, deep nesting). No input may produce a 5xx; each refusal is OpenAI's error body."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.generation import GenerationMode
from server_process import ServerProcess

POST_ROUTES = ("/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize")
# Small, valid bodies to break: generation stays short.
VALID_BODIES: dict[str, dict[str, Any]] = {
    "/v1/completions": {"prompt": "hello", "max_tokens": 2, "temperature": 0.5,
                        "stop": ["x"], "logit_bias": {"5": 1.0}, "stream": False},
    "/v1/chat/completions": {"messages": [{"role": "system", "content": "be brief"},
                                          {"role": "user", "content": [{"type": "text",
                                                                        "text": "hi"}]}],
                             "max_tokens": 2, "n": 2, "stop_token_ids": [3],
                             "response_format": {"type": "text"}},
    "/tokenize": {"messages": [{"role": "user", "content": "hi"}], "add_special_tokens": True},
    "/detokenize": {"tokens": [1, 2, 3]},
}
EXAMPLES = 25

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.sampled_from([10**400, -(10**400), 2**63, -(2**63) - 1, 1e308, -1e308, 0.5, -0.0])
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8),
                                                                      children, max_size=4),
    max_leaves=12)


def _paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in a JSON value where another value can be put (the root too)."""
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*path, index))


def _replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    copy: Any = dict(value) if isinstance(value, dict) else list(value)
    copy[head] = _replaced(copy[head], rest, new)
    return copy


@st.composite
def broken_bodies(draw: st.DrawFn, route: str) -> bytes:
    """A valid body with one value anywhere replaced by any JSON, or cut short."""
    body = VALID_BODIES[route]
    if draw(st.booleans()):
        text = json.dumps(body)
        return text[:draw(st.integers(0, len(text) - 1))].encode()
    path = draw(st.sampled_from(list(_paths(body))))
    return json.dumps(_replaced(body, path, draw(json_values))).encode()


def assert_answered_without_server_error(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:2000])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["message"], str) and error["message"]
        assert set(error) == {"message", "type", "param", "code"}


def post(client: httpx.Client, route: str, body: bytes) -> httpx.Response:
    return client.post(route, content=body, headers={"Content-Type": "application/json"})


@pytest.fixture(scope="module")
def http(tiny_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=tiny_server.base_url, timeout=120.0) as client:
        yield client


@pytest.fixture(scope="module")
def openapi_schema(http: httpx.Client) -> Any:
    return schemathesis.openapi.from_dict(http.get("/openapi.json").json())


@pytest.mark.parametrize("route", POST_ROUTES)
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_bodies_generated_from_the_schema_get_no_server_error(
        http: httpx.Client, openapi_schema: Any, route: str, mode: GenerationMode) -> None:
    operation = openapi_schema[route]["POST"]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
              derandomize=True)
    def check(case: schemathesis.Case) -> None:
        body = case.body if isinstance(case.body, (bytes, str)) else json.dumps(case.body)
        response = post(http, route, body.encode() if isinstance(body, str) else body)
        assert_answered_without_server_error(response)

    check()


@pytest.mark.parametrize("route", POST_ROUTES)
def test_broken_bodies_get_no_server_error(http: httpx.Client, route: str) -> None:
    @given(body=broken_bodies(route))
    @settings(max_examples=EXAMPLES * 2, deadline=None,
              suppress_health_check=list(HealthCheck), derandomize=True)
    def check(body: bytes) -> None:
        assert_answered_without_server_error(post(http, route, body))

    check()


@pytest.mark.parametrize("route", POST_ROUTES)
@pytest.mark.parametrize("depth", [100, 900, 1000, 5000, 100_000])
@pytest.mark.parametrize("opening,closing", [("[", "]"), ('{"a":', "}")])
def test_deeply_nested_bodies_get_no_server_error(http: httpx.Client, route: str, depth: int,
                                                  opening: str, closing: str) -> None:
    """A deep value in an extra field (kept) and in place of a field the model reads."""
    deep = opening * depth + ("1" if opening != "[" else "") + closing * depth
    base = json.dumps(VALID_BODIES[route])[:-1]
    for body in (f'{base}, "extra": {deep}}}', f'{{"prompt": {deep}, "messages": {deep}, '
                                              f'"tokens": {deep}}}'):
        assert_answered_without_server_error(post(http, route, body.encode()))
    assert http.get("/health").status_code == 200
