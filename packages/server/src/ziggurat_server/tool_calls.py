"""A chat request's tool fields turned into the engine's terms: the checked plan, the prompt's
tools and the grammar that keeps every call well-formed."""

from __future__ import annotations

from ziggurat_core.engine.sampling_params import SamplingParams, StructuredOutputsParams
from ziggurat_core.protocol import ChatCompletionRequest
from ziggurat_core.tools import ToolPlan, check_tool_schemas, plan_tools, tool_call_grammar

from .errors import bad_request


def tool_plan(body: ChatCompletionRequest) -> ToolPlan:
    """The request's tool plan; a bad combination or a schema that does not compile raises the
    engine's RequestValidationError, answered with a 400 naming the field."""
    plan = plan_tools(body.tools, body.tool_choice, body.parallel_tool_calls, body.functions,
                      body.function_call)
    check_tool_schemas(plan, "functions" if plan.legacy else "tools")
    return plan


def constrain_to_tool_calls(params: SamplingParams, plan: ToolPlan) -> None:
    """Attach the tool-call grammar (nothing when no call can be made)."""
    grammar = tool_call_grammar(plan)
    if grammar is None:
        return
    if params.structured_outputs is not None:
        raise bad_request("a structured output format cannot be combined with tool calls; set "
                          "tool_choice to 'none' or drop the format", param="tool_choice")
    params.structured_outputs = StructuredOutputsParams(grammar=grammar)
