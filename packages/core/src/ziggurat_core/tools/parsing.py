"""Tool calls read back from the grammar's captures, and the text outside them.

The grammar (`grammar.py`) guarantees the shape: in "required" mode the output is calls from its
first token; in "auto" mode the first `<tool_call>` starts a forced call and only calls follow
it. So the content is the text before the first call marker, and the calls are the
(name, arguments) capture pairs; the text of the calls is never parsed.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from . import hermes
from .grammar import TOOL_ARGUMENTS_CAPTURE, TOOL_NAME_CAPTURE
from .plan import ToolPlan


@dataclass(frozen=True)
class ParsedToolCall:
    name: str
    arguments: str  # JSON text that the tool's parameters schema accepts
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")


def calls_from_captures(captures: Sequence[tuple[str, str]]) -> list[ParsedToolCall]:
    """The complete calls, in order. A name without arguments yet (a call cut short by
    max_tokens or still being written) is not a call."""
    calls: list[ParsedToolCall] = []
    name: str | None = None
    for key, text in captures:
        if key == TOOL_NAME_CAPTURE:
            name = text
        elif key == TOOL_ARGUMENTS_CAPTURE and name is not None:
            calls.append(ParsedToolCall(name, text))
            name = None
    return calls


def content_outside_calls(plan: ToolPlan, text: str) -> str | None:
    """The answer's text without the call markup; None when nothing is left."""
    if not plan.calls_possible:
        return text
    if plan.mode == "required":
        return None
    cut = text.find(hermes.CALL_START)
    content = text if cut < 0 else text[:cut]
    return content or None


def finish_reason_with_calls(plan: ToolPlan, finish_reason: str | None,
                             calls: Sequence[ParsedToolCall]) -> str | None:
    """OpenAI's finish_reason when the model ended its turn after calling tools."""
    if finish_reason == "stop" and calls:
        return "function_call" if plan.legacy else "tool_calls"
    return finish_reason


class ToolCallStreamReader:
    """One streamed choice: what to send as content and which calls completed, step by step.

    Text that may be the start of a call marker is held back until the next step shows what it
    is, so the markup never reaches the content; what is sent adds up to exactly
    `content_outside_calls` of the final text.
    """

    def __init__(self, plan: ToolPlan) -> None:
        self.plan = plan
        self._content_sent = 0
        self._content_done = plan.calls_possible and plan.mode == "required"
        self._calls_sent = 0

    def content_delta(self, text: str, finished: bool) -> str:
        """The next piece of content, given the whole text so far."""
        if self._content_done:
            return ""
        end = len(text)
        if self.plan.calls_possible:
            cut = text.find(hermes.CALL_START, self._content_sent)
            if cut >= 0:
                end = cut
                self._content_done = True
            elif not finished:
                end -= _marker_prefix_length(text)
        piece = text[self._content_sent:end]
        self._content_sent = max(self._content_sent, end)
        return piece

    def new_calls(self, captures: Sequence[tuple[str, str]]) -> list[ParsedToolCall]:
        """The calls completed since the last step."""
        calls = calls_from_captures(captures)[self._calls_sent:]
        self._calls_sent += len(calls)
        return calls


def _marker_prefix_length(text: str) -> int:
    """The length of the longest end of `text` that a call marker could continue."""
    marker = hermes.CALL_START
    for length in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-length:]):
            return length
    return 0
