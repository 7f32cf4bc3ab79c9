"""Tool calling in the client: typed tools and choices out, typed calls and call deltas back."""

from __future__ import annotations

import json

import httpx
import respx
from client_helpers import API, BASE, chat_completion_body, sse
from ziggurat import Client
from ziggurat_core.protocol import (
    ChatCompletionTool,
    ChatMessage,
    FunctionDefinition,
    NamedFunction,
    NamedToolChoice,
    ToolCallFunction,
    ToolCallParam,
)

WEATHER = ChatCompletionTool(function=FunctionDefinition(
    name="get_weather", parameters={"type": "object", "properties": {"city": {"type": "string"}}}))


def call_chunk(delta: dict[str, object], finish_reason: str | None = None) -> dict[str, object]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "tiny",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}


def test_tools_and_choices_are_sent_as_openai_shapes() -> None:
    with respx.mock(base_url=API) as router:
        route = router.post("/chat/completions").respond(200, json=chat_completion_body())
        Client(base_url=BASE).chat.completions.create(
            "tiny", [{"role": "user", "content": "Weather?"}],
            tools=[WEATHER, {"type": "function", "function": {"name": "get_time"}}],
            tool_choice=NamedToolChoice(function=NamedFunction(name="get_weather")),
            parallel_tool_calls=False)
    body = json.loads(route.calls.last.request.content)
    assert body["tools"] == [
        {"type": "function", "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
        {"type": "function", "function": {"name": "get_time"}}]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["parallel_tool_calls"] is False


def test_the_round_trip_messages_are_sent_as_openai_shapes() -> None:
    assistant = ChatMessage(role="assistant", tool_calls=[ToolCallParam(
        id="call_1", function=ToolCallFunction(name="get_weather", arguments='{"city": "Oslo"}'))])
    result = ChatMessage(role="tool", tool_call_id="call_1", content="4 C")
    with respx.mock(base_url=API) as router:
        route = router.post("/chat/completions").respond(200, json=chat_completion_body())
        Client(base_url=BASE).chat.completions.create(
            "tiny", [{"role": "user", "content": "Weather?"}, assistant, result], tools=[WEATHER])
    messages = json.loads(route.calls.last.request.content)["messages"]
    assert messages[1] == {"role": "assistant", "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]}
    assert messages[2] == {"role": "tool", "tool_call_id": "call_1", "content": "4 C"}


def test_streamed_tool_call_deltas_are_typed() -> None:
    chunks = sse(
        call_chunk({"role": "assistant", "content": ""}),
        call_chunk({"tool_calls": [{"index": 0, "id": "call_9", "type": "function",
                                    "function": {"name": "get_weather", "arguments": ""}}]}),
        call_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        call_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]}),
        call_chunk({}, "tool_calls"),
        "[DONE]")
    with respx.mock(base_url=API) as router:
        router.post("/chat/completions").mock(return_value=httpx.Response(200, content=chunks))
        stream = Client(base_url=BASE).chat.completions.create(
            "tiny", [{"role": "user", "content": "Weather?"}], tools=[WEATHER], stream=True)
        deltas = [chunk.choices[0] for chunk in stream]
    calls = [call for choice in deltas for call in choice.delta.tool_calls or []]
    first = calls[0]
    assert (first.index, first.id, first.type) == (0, "call_9", "function")
    assert first.function is not None and first.function.name == "get_weather"
    arguments = "".join(call.function.arguments or "" for call in calls if call.function)
    assert json.loads(arguments) == {"city": "Oslo"}
    assert deltas[-1].finish_reason == "tool_calls"


def test_legacy_function_call_is_typed() -> None:
    body = chat_completion_body()
    body["choices"][0]["message"] = {
        "role": "assistant", "content": None,
        "function_call": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    body["choices"][0]["finish_reason"] = "function_call"
    with respx.mock(base_url=API) as router:
        route = router.post("/chat/completions").respond(200, json=body)
        reply = Client(base_url=BASE).chat.completions.create(
            "tiny", [{"role": "user", "content": "Weather?"}],
            functions=[WEATHER.function], function_call={"name": "get_weather"})
    sent = json.loads(route.calls.last.request.content)
    assert sent["functions"][0]["name"] == "get_weather"
    assert sent["function_call"] == {"name": "get_weather"}
    message = reply.choices[0].message
    assert message.function_call is not None
    assert (message.function_call.name, message.function_call.arguments) == (
        "get_weather", '{"city": "Oslo"}')
