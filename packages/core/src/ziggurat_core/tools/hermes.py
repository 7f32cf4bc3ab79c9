"""The built-in tool prompt for chat templates that do not render tools (SmolLM2's, for one).

It follows the widely used Hermes convention: the tools are listed as JSON inside `<tools>` in a
system section, a call is `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, and a
tool's result comes back inside `<tool_response>` in a user turn. It works by rewriting the
messages into plain system/user/assistant turns, so any template can render them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

CALL_START = "<tool_call>"
CALL_END = "</tool_call>"
RESPONSE_START = "<tool_response>"
RESPONSE_END = "</tool_response>"
# Between two calls of one answer.
CALL_SEPARATOR = "\n"

_INSTRUCTIONS = (
    "# Tools\n\n"
    "You can call functions to help answer. Their signatures are listed as JSON inside "
    "<tools></tools>:\n<tools>\n{tools}\n</tools>\n\n"
    "To call a function, answer with a JSON object holding its name and arguments inside "
    "<tool_call></tool_call>:\n"
    f'{CALL_START}\n{{"name": <function-name>, "arguments": <arguments-json-object>}}\n{CALL_END}'
)


# A call is CALL_START, BEFORE_NAME, the name as a JSON string, BEFORE_ARGUMENTS, the arguments'
# JSON object, then CALL_SUFFIX.
BEFORE_NAME = '\n{"name": '
BEFORE_ARGUMENTS = ', "arguments": '
CALL_SUFFIX = f"}}\n{CALL_END}"


def format_call(name: str, arguments: str) -> str:
    """One call as the model writes it; `arguments` is JSON text."""
    name_json = json.dumps(name, ensure_ascii=False)
    return f"{CALL_START}{BEFORE_NAME}{name_json}{BEFORE_ARGUMENTS}{arguments}{CALL_SUFFIX}"


def tools_section(tools: Sequence[Mapping[str, Any]]) -> str:
    listed = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    return _INSTRUCTIONS.replace("{tools}", listed)


def needs_rewrite(messages: Sequence[Mapping[str, Any]],
                  tools: Sequence[Mapping[str, Any]] | None) -> bool:
    """Whether there is anything tool-shaped for a template that knows nothing of tools."""
    return bool(tools) or any(
        message.get("tool_calls") or message.get("role") == "tool" for message in messages)


def messages_with_tools(messages: Sequence[Mapping[str, Any]],
                        tools: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """The conversation with tools, calls and results spelled out as text in ordinary turns."""
    rewritten: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role == "tool":
            response = f"{RESPONSE_START}\n{_text(message.get('content'))}\n{RESPONSE_END}"
            previous = rewritten[-1] if rewritten else None
            if previous is not None and previous.get("_tool_responses"):
                previous["content"] += "\n" + response  # results of one round share a turn
            else:
                rewritten.append({"role": "user", "content": response, "_tool_responses": True})
            continue
        plain = {key: value for key, value in message.items()
                 if key not in ("tool_calls", "tool_call_id")}
        calls = message.get("tool_calls") or []
        if calls:
            written = CALL_SEPARATOR.join(_format_call_param(call) for call in calls)
            content = _text(message.get("content"))
            plain["content"] = f"{content}\n{written}" if content else written
        rewritten.append(plain)
    for message in rewritten:
        message.pop("_tool_responses", None)
    if tools:
        section = tools_section(tools)
        if rewritten and rewritten[0].get("role") in ("system", "developer"):
            first = rewritten[0]
            content = _text(first.get("content"))
            rewritten[0] = {**first, "role": "system",
                            "content": f"{content}\n\n{section}" if content else section}
        else:
            rewritten.insert(0, {"role": "system", "content": section})
    return rewritten


def _format_call_param(call: Mapping[str, Any]) -> str:
    function = call.get("function") or {}
    arguments = function.get("arguments", {})
    text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return format_call(str(function.get("name", "")), text)


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, Mapping))
