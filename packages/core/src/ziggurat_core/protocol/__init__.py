"""OpenAI-compatible request and response models shared by the client and the server.

The server builds every body it sends from these models (`ResponseModel.wire_json`) and the
client parses every body it receives with them, so the two cannot drift apart.
This package must never import torch: the client depends on it.
"""

from ._base import RequestModel, ResponseModel
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
    PromptTokensDetails,
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
from .structured import (
    ConstraintFieldsError,
    JSONSchemaFormat,
    OutputConstraint,
    ResponseFormat,
    StructuredOutputFields,
    StructuredOutputsOptions,
    output_constraint,
)
from .timings import Timings
from .tokenization import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse
from .tools import (
    ChatCompletionTool,
    FunctionDefinition,
    LegacyFunctionChoice,
    NamedFunction,
    NamedToolChoice,
    ToolCallFunction,
    ToolCallParam,
    ToolChoice,
)

__all__ = [
    "AcceleratorDevice",
    "ChatChoiceLogprobs",
    "ChatCompletion",
    "ChatCompletionChoice",
    "ChatCompletionChunk",
    "ChatCompletionChunkChoice",
    "ChatCompletionMessage",
    "ChatCompletionMessageToolCall",
    "ChatCompletionRequest",
    "ChatCompletionTool",
    "ChatMessage",
    "ChatTokenLogprob",
    "ChoiceDelta",
    "ChoiceDeltaFunctionCall",
    "ChoiceDeltaToolCall",
    "Completion",
    "CompletionChoice",
    "CompletionLogprobs",
    "CompletionRequest",
    "ConstraintFieldsError",
    "DetokenizeRequest",
    "DetokenizeResponse",
    "EngineCounters",
    "EngineInfo",
    "ErrorDetail",
    "ErrorResponse",
    "FinishReason",
    "FunctionCall",
    "FunctionDefinition",
    "GpuInfo",
    "HealthStatus",
    "HostCpu",
    "JSONSchemaFormat",
    "Model",
    "ModelList",
    "OutputConstraint",
    "LegacyFunctionChoice",
    "NamedFunction",
    "NamedToolChoice",
    "PromptTokensDetails",
    "RequestModel",
    "ResolvedEngineSettings",
    "ResponseFormat",
    "ResponseModel",
    "SamplingFields",
    "ServerInfo",
    "ServerMemory",
    "StreamOptions",
    "StructuredOutputFields",
    "StructuredOutputsOptions",
    "TextContentPart",
    "Timings",
    "TokenizeRequest",
    "TokenizeResponse",
    "ToolCallFunction",
    "ToolCallParam",
    "ToolChoice",
    "TopLogprob",
    "Usage",
    "output_constraint",
]
