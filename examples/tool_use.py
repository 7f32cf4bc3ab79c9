"""A complete tool-use loop: ask, get a call, run the function here, send the result back as a
`tool` message, get the answer.

Start a server first (`make serve`), then: python examples/tool_use.py
The server guarantees each call is well-formed: its name is one of the tools and its arguments
are JSON that the tool's `parameters` schema accepts, so `json.loads` below cannot fail.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ziggurat import Client
from ziggurat_core.protocol import (
    ChatCompletionTool,
    ChatMessage,
    FunctionDefinition,
    ToolCallFunction,
    ToolCallParam,
)

TOOLS = [
    ChatCompletionTool(function=FunctionDefinition(
        name="get_current_weather",
        description="Get the current weather in a city",
        parameters={
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city, e.g. Paris"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    )),
]


def get_current_weather(city: str, unit: str = "celsius") -> dict[str, Any]:
    """A stand-in for a real weather service."""
    celsius = 18
    temperature = celsius if unit == "celsius" else round(celsius * 9 / 5 + 32)
    return {"city": city, "temperature": temperature, "unit": unit, "sky": "sunny"}


LOCAL_FUNCTIONS: dict[str, Callable[..., Any]] = {"get_current_weather": get_current_weather}


def main() -> None:
    messages: list[ChatMessage | dict[str, Any]] = [
        {"role": "user", "content": "What is the weather like in Paris today?"}]
    with Client() as client:
        model = client.models.list().data[0].id
        # 1. "required": the model must call a tool (use "auto" to let it choose).
        reply = client.chat.completions.create(model, messages, tools=TOOLS,
                                               tool_choice="required", temperature=0,
                                               max_tokens=128)
        message = reply.choices[0].message
        calls = message.tool_calls or []
        print(f"finish_reason: {reply.choices[0].finish_reason}")
        # 2. The assistant's calls go back into the history, for the model to see what it asked.
        messages.append(ChatMessage(role="assistant", content=message.content, tool_calls=[
            ToolCallParam(id=call.id, function=ToolCallFunction(
                name=call.function.name, arguments=call.function.arguments))
            for call in calls]))
        # 3. Run each call here and answer it with a `tool` message naming the call's id.
        for call in calls:
            arguments = json.loads(call.function.arguments)
            result = LOCAL_FUNCTIONS[call.function.name](**arguments)
            print(f"call {call.function.name}({arguments}) -> {result}")
            messages.append(ChatMessage(role="tool", tool_call_id=call.id,
                                        content=json.dumps(result)))
        # 4. With the results in the history, the model answers in words.
        answer = client.chat.completions.create(model, messages, tools=TOOLS, tool_choice="none",
                                                temperature=0, max_tokens=96)
        print(f"answer: {answer.choices[0].message.content}")


if __name__ == "__main__":
    main()
