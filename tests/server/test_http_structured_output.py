"""Structured output through the HTTP server (real engine, tiny RANDOM-weight model): the
outputs are valid because of the grammar, never because the model followed an instruction."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from server_helpers import DONE, chat_text, parse_sse

MESSAGES = [{"role": "user", "content": "Tell me about a person."}]
PERSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


def check_person(document: object) -> None:
    """PERSON_SCHEMA, checked by hand."""
    assert isinstance(document, dict) and set(document) == {"name", "age"}
    assert isinstance(document["name"], str) and 1 <= len(document["name"]) <= 6
    assert type(document["age"]) is int and 0 <= document["age"] <= 120


@pytest.fixture()
def sdk(tiny_server: Any) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{tiny_server.base_url}/v1", api_key="not-needed",
                       max_retries=0) as client:
        yield client


def chat(client: httpx.Client, **body: Any) -> httpx.Response:
    return client.post("/v1/chat/completions", json={"model": "tiny", "messages": MESSAGES, **body})


def complete(client: httpx.Client, **body: Any) -> httpx.Response:
    return client.post("/v1/completions", json={"model": "tiny", "prompt": "Once", **body})


def test_response_format_json_schema_through_the_openai_sdk(sdk: openai.OpenAI) -> None:
    for seed in range(6):
        response = sdk.chat.completions.create(
            model="tiny", messages=MESSAGES, temperature=1.0, seed=seed, max_tokens=80,  # type: ignore[arg-type]
            response_format={"type": "json_schema", "json_schema": {
                "name": "person", "schema": PERSON_SCHEMA, "strict": True}})
        choice = response.choices[0]
        assert choice.finish_reason == "stop"
        check_person(json.loads(choice.message.content or ""))


def test_response_format_json_object(client: httpx.Client) -> None:
    for seed in range(4):
        response = chat(client, temperature=1.0, seed=seed, max_tokens=200,
                        response_format={"type": "json_object"})
        assert response.status_code == 200, response.text
        choice = response.json()["choices"][0]
        if choice["finish_reason"] == "stop":
            assert isinstance(json.loads(choice["message"]["content"]), dict)
        else:  # a random model may write a long object; cut short, it is still one's start
            assert choice["finish_reason"] == "length"
            assert choice["message"]["content"].startswith("{")


def test_response_format_text_is_unconstrained(client: httpx.Client) -> None:
    plain = chat(client, temperature=0, max_tokens=8, ignore_eos=True)
    text = chat(client, temperature=0, max_tokens=8, ignore_eos=True, response_format={"type": "text"})
    assert text.status_code == 200
    assert text.json()["choices"][0]["message"] == plain.json()["choices"][0]["message"]


def test_structured_outputs_regex_choice_grammar_on_both_endpoints(client: httpx.Client) -> None:
    pattern = r"[a-c]{2}-[0-9]{2}"
    grammar = 'start: "<" NAME ">"\nNAME: /[xyz]{1,4}/\n'
    for seed in range(4):
        for send in (chat, complete):
            regex = send(client, seed=seed, max_tokens=30, structured_outputs={"regex": pattern})
            choice = send(client, seed=seed, max_tokens=30, structured_outputs={"choice": ["red", "green"]})
            lark = send(client, seed=seed, max_tokens=30, structured_outputs={"grammar": grammar})
            legacy = send(client, seed=seed, max_tokens=30, guided_choice=["up", "down"])
            texts = []
            for response in (regex, choice, lark, legacy):
                assert response.status_code == 200, response.text
                result = response.json()["choices"][0]
                assert result["finish_reason"] == "stop"
                texts.append(result["message"]["content"] if send is chat else result["text"])
            assert re.fullmatch(pattern, texts[0])
            assert texts[1] in ("red", "green")
            assert re.fullmatch(r"<[xyz]{1,4}>", texts[2])
            assert texts[3] in ("up", "down")


def test_streamed_constrained_output_is_the_same_as_the_whole(client: httpx.Client) -> None:
    body = {"model": "tiny", "messages": MESSAGES, "seed": 7, "max_tokens": 80,
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "person", "schema": PERSON_SCHEMA}}}
    whole = client.post("/v1/chat/completions", json=body).json()["choices"][0]
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        events = parse_sse(response.read().decode())
    assert events[-1] == DONE
    streamed = chat_text(events)
    assert streamed == whole["message"]["content"]
    check_person(json.loads(streamed))
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(("body", "param", "message"), [
    ({"structured_outputs": {"regex": "(unclosed"}}, "structured_outputs.regex", "unclosed group"),
    ({"structured_outputs": {"grammar": "start: missing\n"}}, "structured_outputs.grammar", "missing"),
    ({"guided_grammar": 'root ::= "a" ('}, "guided_grammar", "GBNF"),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "bad", "schema": {"type": "no-such-type"}}}}, "response_format", "no-such-type"),
    ({"guided_json": "{not json"}, "guided_json", "not valid JSON"),
    ({"response_format": {"type": "json_object"}, "guided_regex": "a+"}, "response_format",
     "response_format, guided_regex"),
    ({"structured_outputs": {"regex": "a+", "choice": ["a"]}}, "structured_outputs.regex",
     "structured_outputs.regex, structured_outputs.choice"),
    ({"structured_outputs": {}}, "structured_outputs", "must set one of"),
])
def test_a_bad_constraint_is_a_400_naming_the_field(client: httpx.Client, body: dict[str, Any],
                                                     param: str, message: str) -> None:
    for send in (chat, complete):
        response = send(client, max_tokens=5, **body)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert error["param"] == param
        assert message in error["message"]
    # The server keeps serving.
    assert chat(client, max_tokens=3, structured_outputs={"choice": ["fine"]}).json()[
        "choices"][0]["message"]["content"] == "fine"


def test_json_schema_response_format_needs_its_schema_object(client: httpx.Client) -> None:
    response = chat(client, response_format={"type": "json_schema"})
    assert response.status_code == 400
    assert "json_schema" in response.json()["error"]["message"]
