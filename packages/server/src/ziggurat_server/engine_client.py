"""What the server needs from an engine: the public face of `AsyncEngine`, without torch.

The server only ever talks to an object of this shape, so importing the server never imports torch;
the real `AsyncEngine` is imported lazily by the loader.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from ziggurat_core.engine.config import EngineConfig, ModelConfig
from ziggurat_core.engine.outputs import RequestOutput
from ziggurat_core.engine.sampling_params import SamplingParams


class TokenizerLike(Protocol):
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str: ...

    def apply_chat_template(self, messages: list[dict[str, Any]], *args: Any,
                            **kwargs: Any) -> Any: ...


class EngineClient(Protocol):
    errored: bool

    @property
    def tokenizer(self) -> Any: ...

    @property
    def model_config(self) -> ModelConfig: ...

    @property
    def engine_config(self) -> EngineConfig: ...

    @property
    def model_name(self) -> str: ...

    @property
    def max_model_len(self) -> int: ...

    def generate(
        self,
        request_id: str,
        *,
        prompt: str | None = None,
        prompt_token_ids: list[int] | None = None,
        messages: list[dict[str, Any]] | None = None,
        tools: list[dict[str, Any]] | None = None,
        sampling_params: SamplingParams | None = None,
    ) -> AsyncIterator[RequestOutput]: ...

    def abort(self, request_id: str) -> None: ...

    def stats(self) -> dict[str, Any]: ...

    def device_info(self) -> dict[str, Any]: ...

    def shutdown(self) -> None: ...


def load_async_engine(config: EngineConfig) -> EngineClient:
    """Build the real engine (blocking: loads the weights). Imported here so torch stays lazy."""
    from ziggurat_core.engine.async_engine import AsyncEngine

    engine: EngineClient = AsyncEngine.from_config(config)
    return engine
