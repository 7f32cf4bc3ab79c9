"""`ServingEngine`: everything the server asks of an engine, typed, without torch.

The server only ever talks to an object of this shape (the real one is `AsyncEngine`), so
importing the server never imports torch, and the server never reaches into the engine's insides:
what it needs (tokenizer operations, logprob bytes, counters, hardware) comes through here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Protocol

from ziggurat_core.engine.config import EngineConfig, ModelConfig
from ziggurat_core.engine.inputs import ChatMessage, ToolDefinition
from ziggurat_core.engine.outputs import RequestOutput
from ziggurat_core.engine.reports import DeviceInfo, EngineStats, ReplicaReport, ResolvedSettings
from ziggurat_core.engine.sampling_params import SamplingParams


class ServingEngine(Protocol):
    @property
    def errored(self) -> bool:
        """The engine's loop died; every request from now on fails."""
        ...

    @property
    def model_config(self) -> ModelConfig: ...

    @property
    def engine_config(self) -> EngineConfig: ...

    @property
    def resolved_settings(self) -> ResolvedSettings: ...

    @property
    def model_name(self) -> str: ...

    @property
    def max_model_len(self) -> int: ...

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str: ...

    def apply_chat_template(self, messages: list[ChatMessage], *, add_generation_prompt: bool,
                            tools: list[ToolDefinition] | None = None,
                            continue_final_message: bool = False,
                            template_kwargs: Mapping[str, object] | None = None) -> str:
        """The prompt text of a conversation (raises ValueError when the template fails)."""
        ...

    def generate(
        self,
        request_id: str,
        *,
        prompt: str | None = None,
        prompt_token_ids: list[int] | None = None,
        messages: list[ChatMessage] | None = None,
        tools: list[ToolDefinition] | None = None,
        sampling_params: SamplingParams | None = None,
    ) -> AsyncIterator[RequestOutput]: ...

    def abort(self, request_id: str) -> None: ...

    def stats(self) -> EngineStats: ...

    def device_info(self) -> DeviceInfo: ...

    def replicas(self) -> list[ReplicaReport]:
        """Each engine replica of a replica set; empty for the single in-process engine."""
        ...

    def shutdown(self) -> None: ...


def load_async_engine(config: EngineConfig) -> ServingEngine:
    """Build the real engine (blocking: loads the weights): replicas on Ray when asked for, else
    the in-process engine. Imported here so torch and Ray stay lazy (and Ray never loads on the
    default path)."""
    if config.uses_ray:
        from ziggurat_core.engine.replicas.replica_set import ReplicaSet

        replica_set: ServingEngine = ReplicaSet.start(config)
        return replica_set
    from ziggurat_core.engine.async_engine import AsyncEngine

    engine: ServingEngine = AsyncEngine.from_config(config)
    return engine
