"""Typed keyword arguments of the create methods (checked by type checkers and at run time).

Every sampling parameter the Ziggurat server accepts has a key here; `None` means "not given" and
is left out of the request body, so the server's default applies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

import httpx
from pydantic import BaseModel
from ziggurat_core.protocol import (
    ChatCompletionTool,
    ChatMessage,
    FunctionDefinition,
    NamedFunction,
    NamedToolChoice,
    StreamOptions,
)
from ziggurat_core.protocol.structured import ResponseFormat, StructuredOutputsOptions

MessageParam = ChatMessage | Mapping[str, Any]
PromptParam = str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]]


class RequestOptionParams(TypedDict, total=False):
    """Per-call options that are not part of the endpoint's parameters."""

    extra_headers: Mapping[str, str | None] | None  # a None value removes that header
    extra_body: Mapping[str, Any] | None  # merged into the JSON body last
    timeout: float | httpx.Timeout | None  # overrides the client's timeout for this call


class SamplingParams(TypedDict, total=False):
    """Parameters both completion endpoints accept."""

    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    top_k: int | None
    min_p: float | None
    frequency_penalty: float | None
    presence_penalty: float | None
    repetition_penalty: float | None
    stop: str | Sequence[str] | None
    seed: int | None
    n: int | None
    logit_bias: Mapping[str, float] | None
    user: str | None
    stream_options: StreamOptions | Mapping[str, Any] | None
    ignore_eos: bool | None
    min_tokens: int | None
    stop_token_ids: Sequence[int] | None
    # Serve a repeat of a reproducible request (temperature 0 or a seed) from the server's
    # response cache; the response's `cached` says whether it was.
    cache: bool | None


class StructuredOutputParams(TypedDict, total=False):
    """Output constraints (at most one): OpenAI's `response_format` (a mapping, or a pydantic
    model class sent as a strict json_schema), vLLM's `structured_outputs` and `guided_*`."""

    response_format: ResponseFormat | Mapping[str, Any] | type[BaseModel] | None
    structured_outputs: StructuredOutputsOptions | Mapping[str, Any] | None
    guided_json: Mapping[str, Any] | str | None
    guided_regex: str | None
    guided_choice: Sequence[str] | None
    guided_grammar: str | None


class ChatCompletionParams(SamplingParams, StructuredOutputParams, total=False):
    max_completion_tokens: int | None
    logprobs: bool | None
    top_logprobs: int | None
    tools: Sequence[ChatCompletionTool | Mapping[str, Any]] | None
    tool_choice: str | NamedToolChoice | Mapping[str, Any] | None  # none, auto, required or named
    parallel_tool_calls: bool | None
    functions: Sequence[FunctionDefinition | Mapping[str, Any]] | None  # legacy form of tools
    function_call: str | NamedFunction | Mapping[str, Any] | None  # legacy form of tool_choice
    add_generation_prompt: bool | None
    continue_final_message: bool | None  # continue the last message (add_generation_prompt=False)
    chat_template_kwargs: Mapping[str, Any] | None  # further chat template variables


class CompletionParams(SamplingParams, StructuredOutputParams, total=False):
    echo: bool | None
    logprobs: int | None  # the legacy endpoint's "how many top log-probabilities"
    suffix: str | None
    best_of: int | None


class ChatCompletionCreateKwargs(ChatCompletionParams, RequestOptionParams, total=False):
    """Everything `chat.completions.create` accepts besides model, messages and stream."""


class CompletionCreateKwargs(CompletionParams, RequestOptionParams, total=False):
    """Everything `completions.create` accepts besides model, prompt and stream."""


class TokenizeParams(TypedDict, total=False):
    """POST /tokenize (vLLM's route): exactly one of `prompt` and `messages`; the template
    options apply to messages, rendered as a chat request with the same options would be."""

    model: str | None
    prompt: str | None
    messages: Sequence[MessageParam] | None
    add_special_tokens: bool | None
    add_generation_prompt: bool | None
    continue_final_message: bool | None
    chat_template_kwargs: Mapping[str, Any] | None


class TokenizeKwargs(TokenizeParams, RequestOptionParams, total=False):
    """Everything `tokenize` accepts."""


class DetokenizeParams(TypedDict, total=False):
    model: str | None


class DetokenizeKwargs(DetokenizeParams, RequestOptionParams, total=False):
    """Everything `detokenize` accepts besides the tokens."""


CHAT_COMPLETION_PARAM_NAMES = frozenset(ChatCompletionParams.__optional_keys__)
COMPLETION_PARAM_NAMES = frozenset(CompletionParams.__optional_keys__)
TOKENIZE_PARAM_NAMES = frozenset(TokenizeParams.__optional_keys__)
DETOKENIZE_PARAM_NAMES = frozenset(DetokenizeParams.__optional_keys__)
