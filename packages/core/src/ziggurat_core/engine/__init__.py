"""The Ziggurat inference engine.

Heavy classes are imported lazily so that `from ziggurat_core.engine import SamplingParams`
does not pay for torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import EngineConfig, ModelConfig
from .errors import (
    DuplicateRequestError,
    EngineDeadError,
    EngineError,
    GrammarCompileError,
    ModelNotFoundError,
    PromptTooLongError,
    RequestValidationError,
)
from .inputs import ChatMessage, PromptInput, ToolDefinition
from .outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput, TokenLogprob
from .reports import (
    AcceleratorInfo,
    CpuInfo,
    DeviceInfo,
    EngineStats,
    MemoryProfile,
    ResolvedSettings,
)
from .sampling_params import SamplingParams, SamplingParamsError, StructuredOutputsParams

if TYPE_CHECKING:
    from .async_engine import AsyncEngine
    from .llm import LLM
    from .llm_engine import InferenceEngine

_LAZY = {
    "InferenceEngine": ".llm_engine",
    "AsyncEngine": ".async_engine",
    "LLM": ".llm",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name], __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "LLM",
    "AcceleratorInfo",
    "AsyncEngine",
    "ChatMessage",
    "CompletionOutput",
    "CpuInfo",
    "DeviceInfo",
    "DuplicateRequestError",
    "EngineConfig",
    "EngineDeadError",
    "EngineError",
    "EngineStats",
    "GrammarCompileError",
    "InferenceEngine",
    "Logprob",
    "ModelConfig",
    "ModelNotFoundError",
    "PromptInput",
    "PromptTooLongError",
    "RequestMetrics",
    "RequestOutput",
    "RequestValidationError",
    "MemoryProfile",
    "ResolvedSettings",
    "SamplingParams",
    "SamplingParamsError",
    "StructuredOutputsParams",
    "TokenLogprob",
    "ToolDefinition",
]
