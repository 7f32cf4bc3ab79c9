"""What a request asks of tool calling, checked once where the request enters: which tools, and
whether the model may, must or must not call them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..engine.errors import RequestValidationError
from ..protocol.tools import (
    ChatCompletionTool,
    FunctionDefinition,
    LegacyFunctionChoice,
    NamedFunction,
    NamedToolChoice,
    ToolChoice,
)

ToolMode = Literal["none", "auto", "required"]


@dataclass(frozen=True)
class ToolPlan:
    """`mode` "required" with `forced_name` set is a named choice: exactly that tool is called.

    `legacy` marks a request that used `functions`/`function_call`: its answer carries
    `message.function_call` (one call) and finish_reason "function_call", as OpenAI's did.
    """

    tools: tuple[FunctionDefinition, ...]
    mode: ToolMode
    forced_name: str | None = None
    parallel: bool = True
    legacy: bool = False

    @property
    def calls_possible(self) -> bool:
        return self.mode != "none" and bool(self.tools)

    def callable_tools(self) -> tuple[FunctionDefinition, ...]:
        """The tools the grammar lets the model call (only the named one for a named choice)."""
        if self.forced_name is None:
            return self.tools
        return tuple(tool for tool in self.tools if tool.name == self.forced_name)

    def prompt_tools(self) -> list[dict[str, Any]] | None:
        """The tools as the chat template receives them; none when calls are off, so the model is
        not invited to write calls that nothing would read."""
        if not self.calls_possible:
            return None
        return [ChatCompletionTool(function=tool).model_dump(exclude_none=True)
                for tool in self.tools]


def plan_tools(
    tools: Sequence[ChatCompletionTool] | None = None,
    tool_choice: ToolChoice | None = None,
    parallel_tool_calls: bool | None = None,
    functions: Sequence[FunctionDefinition] | None = None,
    function_call: LegacyFunctionChoice | None = None,
) -> ToolPlan:
    """Check the tool fields together (RequestValidationError naming the field) and resolve the
    defaults as OpenAI does: "auto" when tools are given, "none" otherwise."""
    legacy = functions is not None or function_call is not None
    if legacy and (tools is not None or tool_choice is not None):
        raise RequestValidationError(
            "functions/function_call are the legacy form of tools/tool_choice; send one or the "
            "other", param="functions" if functions is not None else "function_call")
    if legacy:
        definitions = tuple(functions or ())
        choice: ToolChoice | None = (
            NamedToolChoice(function=function_call)
            if isinstance(function_call, NamedFunction) else function_call)
        field_names = ("functions", "function_call")
        parallel = False  # a legacy answer holds one function_call
    else:
        definitions = tuple(tool.function for tool in tools or ())
        choice = tool_choice
        field_names = ("tools", "tool_choice")
        parallel = parallel_tool_calls is not False
    tools_field, choice_field = field_names
    names = [tool.name for tool in definitions]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise RequestValidationError(
            f"tool names must be unique; {', '.join(duplicates)} appears more than once",
            param=tools_field)
    if choice is None:
        choice = "auto" if definitions else "none"
    if isinstance(choice, NamedToolChoice):
        if choice.function.name not in names:
            raise RequestValidationError(
                f"{choice_field} names the function {choice.function.name!r}, which is not among "
                f"the {tools_field} ({', '.join(names) or 'none given'})", param=choice_field)
        return ToolPlan(definitions, "required", choice.function.name, parallel, legacy)
    if choice == "required" and not definitions:
        raise RequestValidationError(
            f"{choice_field} 'required' needs at least one tool in {tools_field}",
            param=choice_field)
    return ToolPlan(definitions, choice, None, parallel, legacy)
