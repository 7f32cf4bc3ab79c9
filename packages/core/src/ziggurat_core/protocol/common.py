"""Pieces shared by completion and chat-completion requests and responses."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints
from pydantic.config import JsonDict

from ._base import INTEGRAL, Integer, RequestModel, ResponseModel

# A token id as requests carry it. The upper bound is the served model's vocabulary: the server
# checks it and writes it into its OpenAPI document (`x-token-id` marks where).
TokenId = Annotated[int, Field(ge=0, json_schema_extra={"x-token-id": True}), INTEGRAL]
# OpenAI caps a logit bias at +-100; the keys are token ids written as decimal strings.
LOGIT_BIAS_LIMIT = 100.0
TokenIdKey = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,10}$")]
LogitBias = Annotated[
    dict[TokenIdKey, Annotated[float, Field(ge=-LOGIT_BIAS_LIMIT, le=LOGIT_BIAS_LIMIT)]],
    # patternProperties alone would let other keys through in the schema; the model refuses them.
    Field(json_schema_extra={"additionalProperties": False, "x-token-id-keys": True})]
# A number of tokens to generate: at most the served model's context window less the prompt.
# The server writes the window into its OpenAPI document (`x-context-tokens` marks where).
_CONTEXT: JsonDict = {"x-context-tokens": True}
MaxTokens = Annotated[int, Field(ge=1, json_schema_extra=_CONTEXT), INTEGRAL]
MinTokens = Annotated[int, Field(ge=0, json_schema_extra=_CONTEXT), INTEGRAL]
# OpenAI's range for the number of top logprobs.
TopLogprobs = Annotated[int, Field(ge=0, le=20), INTEGRAL]
# An empty stop string would stop before the first token; the engine refuses it.
StopString = Annotated[str, Field(min_length=1)]

FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call", "abort"]


class PromptTokensDetails(ResponseModel):
    cached_tokens: int = 0  # prompt tokens served from the prefix cache


class Usage(ResponseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None


class StreamOptions(RequestModel):
    include_usage: bool = False


class TopLogprob(ResponseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatTokenLogprob(ResponseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatChoiceLogprobs(ResponseModel):
    content: list[ChatTokenLogprob] | None = None


class CompletionLogprobs(ResponseModel):
    """The legacy completions logprobs shape (parallel lists)."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] | None = None
    text_offset: list[int] = Field(default_factory=list)


class SamplingFields(RequestModel):
    """Sampling parameters accepted by both endpoints; ranges follow OpenAI and vLLM."""

    model: str | None = None
    max_tokens: MaxTokens | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: Annotated[int, Field(ge=-1), INTEGRAL] | None = None
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=2.0)
    stop: StopString | list[StopString] | None = None
    seed: Integer | None = None
    n: Integer = Field(default=1, ge=1, le=128)
    logit_bias: LogitBias | None = None
    user: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    min_tokens: MinTokens = 0
    stop_token_ids: list[TokenId] | None = None
    # Serve and keep this response in the server's response cache (None: the server's default).
    cache: bool | None = None

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)
