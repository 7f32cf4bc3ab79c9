"""OpenAI-compatible request and response models shared by the client and the server.

The server builds every body it sends from these models (`ResponseModel.wire_json`) and the
client parses every body it receives with them, so the two cannot drift apart.
This package must never import torch: the client depends on it.
"""

from ._base import FIELD_CONTEXT_KEY, INVALID_UTF8, RequestModel, ResponseModel, field_error
from .chat import (
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    ChatCompletionMessage,
    ChatCompletionMessageToolCall,
    ChatCompletionRequest,
    ChatMessage,
    ChoiceDelta,
    ChoiceDeltaFunctionCall,
    ChoiceDeltaToolCall,
    FunctionCall,
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
from .errors import ErrorDetail, ErrorResponse
from .models import Model, ModelList
from .server import (
    AcceleratorDevice,
    EngineCounters,
    EngineInfo,
    GpuInfo,
    HealthStatus,
    HostCpu,
    ResolvedEngineSettings,
    ServerInfo,
    ServerMemory,
)
from .tokenization import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse

__all__ = [
    "FIELD_CONTEXT_KEY",
    "INVALID_UTF8",
    "AcceleratorDevice",
    "ChatChoiceLogprobs",
    "ChatCompletion",
    "ChatCompletionChoice",
    "ChatCompletionChunk",
    "ChatCompletionChunkChoice",
    "ChatCompletionMessage",
    "ChatCompletionMessageToolCall",
    "ChatCompletionRequest",
    "ChatMessage",
    "ChatTokenLogprob",
    "ChoiceDelta",
    "ChoiceDeltaFunctionCall",
    "ChoiceDeltaToolCall",
    "Completion",
    "CompletionChoice",
    "CompletionLogprobs",
    "CompletionRequest",
    "DetokenizeRequest",
    "DetokenizeResponse",
    "EngineCounters",
    "EngineInfo",
    "ErrorDetail",
    "ErrorResponse",
    "field_error",
    "FinishReason",
    "FunctionCall",
    "GpuInfo",
    "HealthStatus",
    "HostCpu",
    "Model",
    "ModelList",
    "RequestModel",
    "ResolvedEngineSettings",
    "ResponseModel",
    "SamplingFields",
    "ServerInfo",
    "ServerMemory",
    "StreamOptions",
    "TextContentPart",
    "TokenizeRequest",
    "TokenizeResponse",
    "TopLogprob",
    "Usage",
]
