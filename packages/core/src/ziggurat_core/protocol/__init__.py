"""OpenAI-compatible request and response models shared by the client and the server.

This package must never import torch: the client depends on it.
"""

from .chat import (
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    ChatCompletionMessage,
    ChatCompletionRequest,
    ChatMessage,
    ChoiceDelta,
    TextContentPart,
)
from .common import (
    ChatChoiceLogprobs,
    ChatTokenLogprob,
    CompletionLogprobs,
    FinishReason,
    SamplingFields,
    StreamOptions,
    TopLogprob,
    Usage,
)
from .completions import Completion, CompletionChoice, CompletionRequest
from .models import (
    DetokenizeRequest,
    DetokenizeResponse,
    ErrorDetail,
    ErrorResponse,
    HealthStatus,
    Model,
    ModelList,
    ServerInfo,
    TokenizeRequest,
    TokenizeResponse,
)

__all__ = [
    "ChatChoiceLogprobs",
    "ChatCompletion",
    "ChatCompletionChoice",
    "ChatCompletionChunk",
    "ChatCompletionChunkChoice",
    "ChatCompletionMessage",
    "ChatCompletionRequest",
    "ChatMessage",
    "ChatTokenLogprob",
    "ChoiceDelta",
    "Completion",
    "CompletionChoice",
    "CompletionLogprobs",
    "CompletionRequest",
    "DetokenizeRequest",
    "DetokenizeResponse",
    "ErrorDetail",
    "ErrorResponse",
    "FinishReason",
    "HealthStatus",
    "Model",
    "ModelList",
    "SamplingFields",
    "ServerInfo",
    "StreamOptions",
    "TextContentPart",
    "TokenizeRequest",
    "TokenizeResponse",
    "TopLogprob",
    "Usage",
]
