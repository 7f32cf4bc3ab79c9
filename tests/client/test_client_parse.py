"""Structured output in the client: a pydantic model as response_format, and `parse`."""

from __future__ import annotations

import pytest
import respx
from client_helpers import API, BASE, chat_completion_body, completion_body, sent_json
from pydantic import BaseModel, ValidationError
from ziggurat import AsyncClient, Client
from ziggurat.types import ParsedChatCompletion
from ziggurat_core.protocol import StructuredOutputsOptions

MESSAGES = [{"role": "user", "content": "Describe a city."}]


class City(BaseModel):
    name: str
    population: int


CITY_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "City", "strict": True, "schema": {
        "type": "object", "title": "City",
        "properties": {"name": {"type": "string", "title": "Name"},
                       "population": {"type": "integer", "title": "Population"}},
        "required": ["name", "population"]}},
}



def test_parse_sends_the_model_schema_and_returns_the_parsed_object() -> None:
    with respx.mock(base_url=API) as router:
        route = router.post("/chat/completions").respond(
            200, json=chat_completion_body('{"name": "Paris", "population": 2100000}'))
        completion = Client(base_url=BASE).chat.completions.parse(
            "tiny", MESSAGES, response_format=City, temperature=0)
    assert sent_json(route) == {"model": "tiny", "messages": MESSAGES, "temperature": 0,
                                "response_format": CITY_FORMAT}
    assert isinstance(completion, ParsedChatCompletion)
    message = completion.choices[0].message
    assert message.parsed == City(name="Paris", population=2100000)
    assert message.content == '{"name": "Paris", "population": 2100000}'
    assert completion.usage is not None and completion.usage.total_tokens == 5


def test_a_cut_short_output_has_no_parsed_object() -> None:
    body = chat_completion_body('{"name": "Par')
    body["choices"][0]["finish_reason"] = "length"
    with respx.mock(base_url=API) as router:
        router.post("/chat/completions").respond(200, json=body)
        completion = Client(base_url=BASE).chat.completions.parse("tiny", MESSAGES, response_format=City)
    assert completion.choices[0].message.parsed is None
    assert completion.choices[0].finish_reason == "length"


def test_content_that_does_not_match_the_model_raises() -> None:
    with respx.mock(base_url=API) as router:
        router.post("/chat/completions").respond(200, json=chat_completion_body('{"name": 3}'))
        with pytest.raises(ValidationError):
            Client(base_url=BASE).chat.completions.parse("tiny", MESSAGES, response_format=City)


def test_create_accepts_a_model_class_dicts_and_the_vllm_fields() -> None:
    with respx.mock(base_url=API) as router:
        chat = router.post("/chat/completions").respond(200, json=chat_completion_body("{}"))
        completions = router.post("/completions").respond(200, json=completion_body("ab"))
        client = Client(base_url=BASE)
        client.chat.completions.create("tiny", MESSAGES, response_format=City)
        assert sent_json(chat)["response_format"] == CITY_FORMAT
        client.chat.completions.create("tiny", MESSAGES, response_format={"type": "json_object"})
        assert sent_json(chat)["response_format"] == {"type": "json_object"}
        client.completions.create("tiny", "x", structured_outputs={"regex": "[ab]+"})
        assert sent_json(completions)["structured_outputs"] == {"regex": "[ab]+"}
        client.completions.create("tiny", "x", guided_choice=["a", "b"])
        assert sent_json(completions)["guided_choice"] == ["a", "b"]
        # The protocol models go out under their JSON names ("json", not the attribute json_).
        client.completions.create("tiny", "x", structured_outputs=StructuredOutputsOptions(json={"type": "object"}))
        assert sent_json(completions)["structured_outputs"] == {"json": {"type": "object"}}


@pytest.mark.anyio
async def test_async_parse() -> None:
    with respx.mock(base_url=API) as router:
        route = router.post("/chat/completions").respond(
            200, json=chat_completion_body('{"name": "Oslo", "population": 700000}'))
        async with AsyncClient(base_url=BASE) as client:
            completion = await client.chat.completions.parse("tiny", MESSAGES, response_format=City)
    assert sent_json(route)["response_format"] == CITY_FORMAT
    assert completion.choices[0].message.parsed == City(name="Oslo", population=700000)
