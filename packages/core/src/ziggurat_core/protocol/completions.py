"""`/v1/completions` request, response and stream chunk."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from ._base import INTEGRAL, ResponseModel
from .common import CompletionLogprobs, FinishReason, SamplingFields, TokenId, TopLogprobs, Usage
from .structured import StructuredOutputFields
from .timings import Timings

# A prompt must hold at least one token: the model needs a position to predict from. Each shape
# is therefore non-empty, and so is each prompt in a batch.
_Text = Annotated[str, Field(min_length=1)]
_TokenIds = Annotated[list[TokenId], Field(min_length=1)]
PromptInput = (_Text | Annotated[list[_Text], Field(min_length=1)] | _TokenIds
               | Annotated[list[_TokenIds], Field(min_length=1)])


class CompletionRequest(SamplingFields, StructuredOutputFields):
    prompt: PromptInput
    echo: bool = False
    logprobs: TopLogprobs | None = None
    suffix: str | None = None
    best_of: Annotated[int, Field(ge=1), INTEGRAL] | None = None

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
