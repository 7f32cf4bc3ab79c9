"""Tool calling in requests: function tools, `tool_choice`, assistant tool calls, and the legacy
`functions` / `function_call` fields that OpenAI replaced with them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ._base import RequestModel

# OpenAI's rule for function names; the name is also written into the prompt and the grammar.
FUNCTION_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"


class FunctionDefinition(RequestModel):
    name: str = Field(pattern=FUNCTION_NAME_PATTERN)
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema for the arguments object
    strict: bool | None = None


class ChatCompletionTool(RequestModel):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(RequestModel):
    name: str


class NamedToolChoice(RequestModel):
    """`{"type": "function", "function": {"name": ...}}`: this tool must be called."""

    type: Literal["function"] = "function"
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice
# The legacy `function_call` request field: "none", "auto" or {"name": ...}.
LegacyFunctionChoice = Literal["none", "auto"] | NamedFunction


class ToolCallFunction(RequestModel):
    name: str
    arguments: str  # JSON text, as the model wrote it


class ToolCallParam(RequestModel):
    """A tool call in an assistant message sent back for the round trip."""

    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction
