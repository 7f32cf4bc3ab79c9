"""Tool calling without torch: the request's tool plan, the Hermes prompt for templates without
tools, the grammar that keeps calls well-formed, and the calls read back from its captures."""

from .grammar import (
    TOOL_ARGUMENTS_CAPTURE,
    TOOL_NAME_CAPTURE,
    check_tool_schemas,
    tool_call_grammar,
)
from .plan import ToolMode, ToolPlan, plan_tools

__all__ = [
    "TOOL_ARGUMENTS_CAPTURE",
    "TOOL_NAME_CAPTURE",
    "ToolMode",
    "ToolPlan",
    "check_tool_schemas",
    "plan_tools",
    "tool_call_grammar",
]
