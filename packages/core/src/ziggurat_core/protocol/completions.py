"""`/v1/completions` request, response and stream chunk."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ._base import ResponseModel
from .common import CompletionLogprobs, FinishReason, SamplingFields, Usage
from .structured import StructuredOutputFields
from .timings import Timings

PromptInput = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(SamplingFields, StructuredOutputFields):
    prompt: PromptInput
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=20)
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=1)

    @field_validator("prompt")
    @classmethod
    def _prompt_not_empty(cls, value: PromptInput) -> PromptInput:
        if isinstance(value, list) and len(value) == 0:
            raise ValueError("prompt must not be an empty list")
        return value

    def prompts(self) -> list[str | list[int]]:
        """Normalise the four accepted prompt shapes into a list of single prompts."""
        value = self.prompt
        if isinstance(value, str):
            return [value]
        if all(isinstance(item, int) for item in value):
            return [list(value)]  # type: ignore[arg-type]
        return list(value)  # type: ignore[arg-type]


class CompletionChoice(ResponseModel):
    index: int = 0
    text: str = ""
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | str | None = None


class Completion(ResponseModel):
    id: str
    object: Literal["text_completion"] | str = "text_completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[CompletionChoice] = Field(default_factory=list)
    usage: Usage | None = None
    timings: Timings | None = None
    cached: bool | None = None  # present when the response cache was asked for
