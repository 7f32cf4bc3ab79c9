"""What a request hands the engine besides its sampling parameters: the prompt. No torch."""

from __future__ import annotations

from typing import TypedDict

# A chat message as chat templates read it: {"role": ..., "content": ..., "tool_calls": ...}.
ChatMessage = dict[str, object]
# An OpenAI tool definition: {"type": "function", "function": {"name": ..., "parameters": ...}}.
ToolDefinition = dict[str, object]


class PromptInput(TypedDict, total=False):
    """Exactly one of `prompt`, `prompt_token_ids` or `messages` (with optional `tools`): the
    keyword arguments of `generate`/`add_request` that say what to continue."""

    prompt: str
    prompt_token_ids: list[int]
    messages: list[ChatMessage]
    tools: list[ToolDefinition] | None
