"""Tool calling through the real server (tiny random-weight model).

The validation tests use the shared tiny server; the generation tests a copy of the tiny model
with a window wide enough for the tools section.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from fixtures_models import TinyModel
from long_context_model import long_context_copy
from server_helpers import DONE, parse_sse
from server_process import ServerProcess

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
        "hourly": {"type": "boolean"},
    },
    "required": ["unit", "days"],
    "additionalProperties": False,
}
WEATHER = {"type": "function", "function": {"name": "get_forecast", "parameters": WEATHER_SCHEMA}}
ALARM = {"type": "function", "function": {
    "name": "set_alarm",
    "parameters": {"type": "object", "properties": {"hour": {"type": "integer", "minimum": 0,
                                                             "maximum": 23}},
                   "required": ["hour"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "Forecast for the week?"}]


def chat(client: httpx.Client, **body: Any) -> httpx.Response:
    return client.post("/v1/chat/completions", json={"messages": ASK, **body})


def assert_400(response: httpx.Response, param: str, *words: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, error
    for word in words:
        assert word in error["message"], error


# --- validation where the request enters ------------------------------------------------------


def test_tool_choice_naming_an_unknown_tool_is_a_400(client: httpx.Client) -> None:
    response = chat(client, tools=[WEATHER],
                    tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert_400(response, "tool_choice", "get_weather", "get_forecast")


def test_required_without_tools_is_a_400(client: httpx.Client) -> None:
    assert_400(chat(client, tool_choice="required"), "tool_choice", "required")


def test_duplicate_tool_names_are_a_400(client: httpx.Client) -> None:
    assert_400(chat(client, tools=[WEATHER, WEATHER]), "tools", "get_forecast")


def test_parameters_that_do_not_compile_are_a_400_naming_the_tool(client: httpx.Client) -> None:
    broken = {"type": "function", "function": {
        "name": "broken", "parameters": {"type": "object",
                                         "properties": {"x": {"type": "no-such-type"}}}}}
    assert_400(chat(client, tools=[WEATHER, broken]), "tools[1].function.parameters", "broken")
    listy = {"type": "function", "function": {"name": "listy", "parameters": {"type": "array"}}}
    assert_400(chat(client, tools=[listy]), "tools[0].function.parameters", "listy", "object")


def test_malformed_tools_are_a_400(client: httpx.Client) -> None:
    spaced = {"type": "function", "function": {"name": "get forecast"}}
    response = chat(client, tools=[spaced])
    assert response.status_code == 400 and "tools" in (response.json()["error"]["param"] or "")
    response = chat(client, tools=[WEATHER], tool_choice="sometimes")
    assert response.status_code == 400
    assert response.json()["error"]["param"].startswith("tool_choice")


def test_legacy_functions_cannot_be_mixed_with_tools(client: httpx.Client) -> None:
    response = chat(client, tools=[WEATHER], functions=[WEATHER["function"]])
    assert_400(response, "functions", "legacy")
    response = chat(client, functions=[WEATHER["function"]], function_call={"name": "nope"})
    assert_400(response, "function_call", "nope")


def test_tool_choice_none_answers_with_text_only(client: httpx.Client) -> None:
    response = chat(client, tools=[WEATHER], tool_choice="none", max_tokens=8,
                    ignore_eos=True)
    assert response.status_code == 200, response.text
    [choice] = response.json()["choices"]
    assert choice["finish_reason"] == "length"
    assert "tool_calls" not in choice["message"]
    assert isinstance(choice["message"]["content"], str)


def test_round_trip_messages_are_accepted(client: httpx.Client) -> None:
    messages = [*ASK,
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_forecast",
                                  "arguments": '{"unit": "celsius", "days": 7}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny all week"}]
    with_round_trip = client.post("/v1/chat/completions", json={
        "messages": messages, "tools": [WEATHER], "tool_choice": "none", "max_tokens": 1})
    assert with_round_trip.status_code == 200, with_round_trip.text
    plain = chat(client, tools=[WEATHER], tool_choice="none", max_tokens=1)
    # The call and its result are part of the prompt.
    assert (with_round_trip.json()["usage"]["prompt_tokens"]
            > plain.json()["usage"]["prompt_tokens"] + 20)


# --- generation: the grammar holds whatever the random model prefers ---------------------


@pytest.fixture(scope="module")
def tool_server(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[ServerProcess]:
    """The tiny model with room for the tools section (see long_context_model.py)."""
    folder = long_context_copy(tiny_model, tmp_path_factory.mktemp("tool-model"))
    server = ServerProcess(tmp_path_factory.mktemp("tool-server-logs"), "--model", str(folder),
                           "--served-model-name", "tiny", "--num-kv-blocks", "512")
    server.wait_ready()
    yield server
    server.stop()


@pytest.fixture()
def tool_client(tool_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=tool_server.base_url, timeout=120.0) as http:
        yield http


def valid_forecast(arguments: dict[str, Any]) -> bool:
    """WEATHER_SCHEMA checked by hand (written independently of llguidance)."""
    allowed = {"unit", "days", "hourly"}
    return (set(arguments) <= allowed and {"unit", "days"} <= set(arguments)
            and arguments["unit"] in ("celsius", "fahrenheit")
            and type(arguments["days"]) is int and 1 <= arguments["days"] <= 14
            and type(arguments.get("hourly", True)) is bool)


def valid_alarm(arguments: dict[str, Any]) -> bool:
    return (set(arguments) == {"hour"} and type(arguments["hour"]) is int
            and 0 <= arguments["hour"] <= 23)


VALIDATORS = {"get_forecast": valid_forecast, "set_alarm": valid_alarm}


def test_required_calls_from_a_random_model_always_validate(tool_client: httpx.Client) -> None:
    # The schemas bound a call's length (enums, bounded integers, no free strings), so even one
    # written a byte per token fits in max_tokens: every answer must be a complete call.
    for seed in range(12):
        response = chat(tool_client, tools=[WEATHER, ALARM], tool_choice="required",
                        parallel_tool_calls=False, temperature=1.0, seed=seed, max_tokens=400)
        assert response.status_code == 200, response.text
        [choice] = response.json()["choices"]
        message = choice["message"]
        assert choice["finish_reason"] == "tool_calls", choice
        assert message["content"] is None
        [call] = message["tool_calls"]
        assert call["type"] == "function" and call["id"].startswith("call_")
        arguments = json.loads(call["function"]["arguments"])
        assert VALIDATORS[call["function"]["name"]](arguments), call


@pytest.mark.parametrize("parallel", [True, False])
def test_cut_short_answers_never_report_a_half_call(tool_client: httpx.Client,
                                                    parallel: bool) -> None:
    for seed in range(6):
        response = chat(tool_client, tools=[WEATHER, ALARM], tool_choice="required",
                        parallel_tool_calls=parallel, temperature=1.0, seed=seed, max_tokens=25)
        [choice] = response.json()["choices"]
        for call in choice["message"].get("tool_calls") or []:
            assert VALIDATORS[call["function"]["name"]](json.loads(call["function"]["arguments"]))
        if choice["finish_reason"] == "length":
            assert choice["message"]["content"] is None


def test_named_choice_calls_that_tool(tool_client: httpx.Client) -> None:
    for seed in range(6):
        response = chat(tool_client, tools=[WEATHER, ALARM], temperature=1.0, seed=seed,
                        tool_choice={"type": "function", "function": {"name": "set_alarm"}},
                        max_tokens=400)
        [choice] = response.json()["choices"]
        assert choice["finish_reason"] == "tool_calls", choice
        [call] = choice["message"]["tool_calls"]
        assert call["function"]["name"] == "set_alarm"
        assert valid_alarm(json.loads(call["function"]["arguments"]))


def test_auto_content_never_holds_call_markup(tool_client: httpx.Client) -> None:
    for seed in range(8):
        response = chat(tool_client, tools=[WEATHER, ALARM], tool_choice="auto", temperature=1.0,
                        seed=seed, max_tokens=60)
        [choice] = response.json()["choices"]
        content = choice["message"]["content"] or ""
        assert "<tool_call>" not in content
        for call in choice["message"].get("tool_calls") or []:
            assert VALIDATORS[call["function"]["name"]](json.loads(call["function"]["arguments"]))


@pytest.fixture()
def sdk(tool_server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{tool_server.base_url}/v1", api_key="not-needed",
                       max_retries=0, timeout=120) as client:
        yield client


def test_streamed_calls_accumulate_to_the_non_streamed_answer(sdk: openai.OpenAI) -> None:
    seen_calls = 0
    for seed in range(6):
        request: dict[str, Any] = dict(
            model="tiny", messages=ASK, tools=[WEATHER, ALARM], tool_choice="required",
            temperature=1.0, seed=seed, max_tokens=400)
        plain = sdk.chat.completions.create(**request)
        with sdk.chat.completions.stream(**request) as stream:
            for _ in stream:
                pass
            # (get_final_completion refuses answers cut short by max_tokens)
            streamed = stream.current_completion_snapshot
        [expected], [got] = plain.choices, streamed.choices
        assert got.finish_reason == expected.finish_reason
        assert got.message.content == expected.message.content
        calls = [(c.function.name, c.function.arguments)
                 for c in expected.message.tool_calls or []]
        seen_calls += len(calls)
        assert [(c.function.name, c.function.arguments)
                for c in got.message.tool_calls or []] == calls
    assert seen_calls > 0


def test_streamed_call_deltas_have_openai_shape(tool_client: httpx.Client) -> None:
    response = chat(tool_client, tools=[ALARM], tool_choice="required", temperature=1.0, seed=3,
                    max_tokens=400, stream=True, parallel_tool_calls=False)
    events = [event for event in parse_sse(response.text) if event != DONE]
    deltas = [choice["delta"] for event in events for choice in event["choices"]]
    call_deltas = [delta["tool_calls"][0] for delta in deltas if "tool_calls" in delta]
    first, *rest = call_deltas
    assert first["index"] == 0 and first["id"].startswith("call_")
    assert first["type"] == "function"
    assert first["function"] == {"name": "set_alarm", "arguments": ""}
    assert all(set(d) == {"index", "function"} and set(d["function"]) == {"arguments"}
               for d in rest)
    arguments = "".join(d["function"]["arguments"] for d in rest)
    assert valid_alarm(json.loads(arguments))
    assert not any(delta.get("content") for delta in deltas)
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_legacy_functions_answer_with_function_call(tool_client: httpx.Client) -> None:
    response = chat(tool_client, functions=[ALARM["function"]], function_call={"name": "set_alarm"},
                    temperature=1.0, seed=1, max_tokens=400)
    [choice] = response.json()["choices"]
    assert choice["finish_reason"] == "function_call"
    assert "tool_calls" not in choice["message"]
    assert choice["message"]["function_call"]["name"] == "set_alarm"
    assert valid_alarm(json.loads(choice["message"]["function_call"]["arguments"]))
