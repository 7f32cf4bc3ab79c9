"""SmolLM2 (the default model, no tools in its own template) asked for the weather through the
openai SDK: the Hermes prompt plus the grammar give a valid call, streamed or not."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam
from server_process import default_model_sdk

pytestmark = pytest.mark.slow

WEATHER: ChatCompletionToolParam = {"type": "function", "function": {
    "name": "get_current_weather",
    "description": "Get the current weather in a given city",
    "parameters": {"type": "object",
                   "properties": {"city": {"type": "string", "description": "The city name"},
                                  "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city"]}}}
QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the weather like in Paris today?"}]


@pytest.fixture(scope="module")
def sdk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    with default_model_sdk(tmp_path_factory.mktemp("smollm2-tools-logs")) as client:
        yield client


def check_weather_call(call_name: str, arguments_text: str) -> dict[str, object]:
    assert call_name == "get_current_weather"
    arguments = json.loads(arguments_text)
    assert isinstance(arguments.get("city"), str)
    assert set(arguments) <= {"city", "unit"}
    assert arguments.get("unit", "celsius") in ("celsius", "fahrenheit")
    return arguments


@pytest.mark.parametrize("tool_choice", ["required", "auto"])
def test_weather_request_returns_a_valid_call(sdk: openai.OpenAI, tool_choice: str) -> None:
    answer = sdk.chat.completions.create(
        model="SmolLM2-135M-Instruct", messages=QUESTION, tools=[WEATHER],
        tool_choice=tool_choice,  # type: ignore[arg-type]
        temperature=0, max_tokens=200)
    choice = answer.choices[0]
    if tool_choice == "auto" and not choice.message.tool_calls:
        assert "<tool_call>" not in (choice.message.content or "")
        return  # the model may answer in words; what it must not do is leak markup
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert calls  # parallel calls are allowed: the model may ask for several
    for call in calls:
        assert call.type == "function"
        check_weather_call(call.function.name, call.function.arguments)


def test_streamed_weather_call_equals_the_plain_one(sdk: openai.OpenAI) -> None:
    request = dict(model="SmolLM2-135M-Instruct", messages=QUESTION, tools=[WEATHER],
                   tool_choice="required", temperature=0, max_tokens=200)
    plain = sdk.chat.completions.create(**request)  # type: ignore[call-overload]
    with sdk.chat.completions.stream(**request) as stream:  # type: ignore[arg-type]
        for _ in stream:
            pass
        streamed = stream.current_completion_snapshot
    [expected], [got] = plain.choices, streamed.choices
    assert got.finish_reason == expected.finish_reason == "tool_calls"
    assert [(c.function.name, c.function.arguments) for c in got.message.tool_calls or []] == [
        (c.function.name, c.function.arguments) for c in expected.message.tool_calls or []]
    assert got.message.content == expected.message.content
