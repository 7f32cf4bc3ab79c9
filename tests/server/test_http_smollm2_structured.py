"""Structured output with the real default model (SmolLM2-135M-Instruct) through the openai SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest
from server_process import default_model_sdk

pytestmark = pytest.mark.slow

CITY_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "country": {"type": "string", "maxLength": 40},
        "population_millions": {"type": "number", "minimum": 0, "maximum": 100},
    },
    "required": ["city", "country", "population_millions"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def sdk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    with default_model_sdk(tmp_path_factory.mktemp("smollm2-structured-logs")) as client:
        yield client


def test_json_schema_response_is_parseable_and_valid(sdk: openai.OpenAI) -> None:
    response = sdk.chat.completions.create(
        model="SmolLM2-135M-Instruct", temperature=0, max_tokens=120,
        messages=[{"role": "user", "content": "Describe Paris as JSON."}],
        response_format={"type": "json_schema", "json_schema": {
            "name": "city", "schema": CITY_SCHEMA, "strict": True}})
    choice = response.choices[0]
    assert choice.finish_reason == "stop"
    document = json.loads(choice.message.content or "")
    assert set(document) == {"city", "country", "population_millions"}
    assert isinstance(document["city"], str) and len(document["city"]) <= 40
    assert isinstance(document["country"], str) and len(document["country"]) <= 40
    population = document["population_millions"]
    assert isinstance(population, int | float) and not isinstance(population, bool)
    assert 0 <= population <= 100
