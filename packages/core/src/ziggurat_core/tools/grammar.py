"""The grammar that makes every tool call well-formed, in llguidance's Lark dialect.

A call is written as the Hermes prompt teaches (`hermes.format_call`). Its name is one of the
tools and its arguments are one JSON document that the tool's `parameters` schema accepts
(llguidance's `%json`). Two named captures carry what the answer needs: `tool_name` (the bare
name) and `tool_arguments` (the arguments' JSON text); they close in that order for each call.

- required / a named tool: the output is calls from its first token;
- auto: free text until the model writes `<tool_call>` (a lazy lexeme), then a forced call;
- none: no grammar.
Between calls only the separator is allowed, and nothing follows the last one: text after a call
could start an unconstrained call-shaped string.
"""

from __future__ import annotations

import json
from typing import Any

import llguidance

from ..engine.errors import RequestValidationError
from ..protocol.tools import FunctionDefinition
from . import hermes
from .plan import ToolPlan

TOOL_NAME_CAPTURE = "__LIST_APPEND:tool_name"
TOOL_ARGUMENTS_CAPTURE = "__LIST_APPEND:tool_arguments"
# The arguments are written as json.dumps writes them (", " and ": ", no other whitespace):
# what models see in their prompts, and no room for a weak model to emit whitespace forever.
# \uXXXX escapes of any character are allowed: json.dumps writes them by default, so models do.
_ARGUMENTS_FORMAT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": ",
                     "json_allow_general_unicode_escapes": True}
QUOTE = '"'



def arguments_schema(tool: FunctionDefinition) -> dict[str, Any]:
    """The tool's parameters schema with Ziggurat's JSON formatting; no parameters means an
    object with any members, as OpenAI reads a tool without `parameters`. Objects that list their
    properties are closed (see `_closed`)."""
    schema: dict[str, Any] = _closed(dict(tool.parameters)) if tool.parameters else {"type": "object"}
    schema.setdefault("type", "object")
    schema["x-guidance"] = _ARGUMENTS_FORMAT
    return schema


_OTHER_MEMBERS_KEYWORDS = ("additionalProperties", "patternProperties", "unevaluatedProperties")


def _closed(node: Any) -> Any:
    """A copy of a schema in which every object that lists `properties` and says nothing about
    other members allows no others, as OpenAI's strict function calling requires: parameters are
    a function's whole signature, and an invented argument fails the caller's `fn(**arguments)`.
    A schema that wants more members says so with `additionalProperties`."""
    if isinstance(node, list):
        return [_closed(item) for item in node]
    if not isinstance(node, dict):
        return node
    closed = {key: _closed(value) for key, value in node.items()}
    if isinstance(node.get("properties"), dict) and not any(
            key in node for key in _OTHER_MEMBERS_KEYWORDS):
        closed["additionalProperties"] = False
    return closed


def check_tool_schemas(plan: ToolPlan, field: str = "tools") -> None:
    """Compile each callable tool's schema once before the request is admitted; a schema that does
    not compile is a RequestValidationError naming the tool, never an unconstrained run."""
    for index, tool in enumerate(plan.tools):
        param = f"{field}[{index}].function.parameters" if field == "tools" else \
            f"{field}[{index}].parameters"
        if tool.parameters is not None and tool.parameters.get("type", "object") != "object":
            raise RequestValidationError(
                f"tool {tool.name!r}: parameters must be a JSON schema of type object, got type "
                f"{tool.parameters.get('type')!r}", param=param)
        grammar = llguidance.LLMatcher.grammar_from_json_schema(arguments_schema(tool))
        error = llguidance.LLMatcher.validate_grammar(grammar)
        if error:
            raise RequestValidationError(
                f"tool {tool.name!r}: parameters is not a JSON schema Ziggurat can enforce: "
                f"{error}", param=param)


def tool_call_grammar(plan: ToolPlan) -> str | None:
    """The Lark grammar for `plan`, or None when no call can be made (mode none, or no tools)."""
    if not plan.calls_possible:
        return None
    tools = plan.callable_tools()
    rules = ["%llguidance {}"]
    single = plan.forced_name is not None or not plan.parallel
    more_calls = "" if single else f" ({_literal(hermes.CALL_SEPARATOR)} call)*"
    if plan.mode == "required":
        rules.append(f"start: call{more_calls}")
    else:
        rules.append(f"start: TEXT | call_trigger call_body{more_calls}")
        rules.append(f"call_trigger[lazy]: TEXT {_literal(hermes.CALL_START)}")
        rules.append(r"TEXT: /(.|\n)*/")
    rules.append(f"call: {_literal(hermes.CALL_START)} call_body")
    alternatives = " | ".join(f"tool_{index}" for index in range(len(tools)))
    rules.append(f"call_body: {_literal(hermes.BEFORE_NAME)} ({alternatives}) "
                 f"{_literal(hermes.CALL_SUFFIX)}")
    for index, tool in enumerate(tools):
        # The name is captured without its quotes: the capture is the name itself.
        rules.append(f"tool_{index}: {_literal(QUOTE)} name_{index} "
                     f"{_literal(QUOTE + hermes.BEFORE_ARGUMENTS)} arguments_{index}")
        rules.append(f'name_{index}[capture="{TOOL_NAME_CAPTURE}"]: {_literal(tool.name)}')
        rules.append(f'arguments_{index}[capture="{TOOL_ARGUMENTS_CAPTURE}"]: '
                     f"%json {json.dumps(arguments_schema(tool))}")
    return "\n".join(rules) + "\n"


def _literal(text: str) -> str:
    """A Lark string literal (JSON's escaping is a subset Lark reads)."""
    return json.dumps(text)
