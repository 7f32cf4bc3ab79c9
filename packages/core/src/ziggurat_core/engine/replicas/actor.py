"""One replica: an `AsyncEngine` inside a Ray actor process. A plain class: `replica_set` makes
it a Ray actor, so this module imports neither Ray nor torch until an actor builds its engine."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ..config import EngineConfig, ModelConfig
from ..inputs import ChatMessage, ToolDefinition
from ..outputs import RequestOutput
from ..reports import DeviceInfo, EngineStats, ResolvedSettings
from ..sampling_params import SamplingParams

logger = logging.getLogger("ziggurat.replicas")


@dataclass(frozen=True)
class ReplicaDescription:
    """What every replica of a set has in common, read once from the first one."""

    model_config: ModelConfig
    resolved_settings: ResolvedSettings
    model_name: str
    max_model_len: int


@dataclass(frozen=True)
class ReplicaHeartbeat:
    """A replica's answer to the set's periodic poll."""

    node: str
    pid: int
    stats: EngineStats
    device_info: DeviceInfo


class ReplicaActor:
    """Loads the model in its constructor (Ray restarts the actor, and so reloads, after a crash)
    and serves requests as streaming generators."""

    def __init__(self, config: EngineConfig) -> None:
        from ..async_engine import AsyncEngine

        self.engine = AsyncEngine.from_config(config)
        # The task streaming each request: aborting cancels it, and the engine's generator frees
        # the request's blocks on the way out.
        self._tasks: dict[str, asyncio.Task[object]] = {}

    def describe(self) -> ReplicaDescription:
        return ReplicaDescription(model_config=self.engine.model_config,
                                  resolved_settings=self.engine.resolved_settings,
                                  model_name=self.engine.model_name,
                                  max_model_len=self.engine.max_model_len)

    def heartbeat(self) -> ReplicaHeartbeat:
        if self.engine.errored:
            # The engine loop died; exiting lets Ray restart this replica with a fresh engine.
            logger.error("replica engine stopped after an internal error; exiting for a restart")
            os._exit(1)
        import ray

        return ReplicaHeartbeat(node=ray.get_runtime_context().get_node_id(), pid=os.getpid(),
                                stats=self.engine.stats(), device_info=self.engine.device_info())

    async def generate(self, request_id: str, prompt: str | None,
                       prompt_token_ids: list[int] | None, messages: list[ChatMessage] | None,
                       tools: list[ToolDefinition] | None,
                       sampling_params: SamplingParams | None) -> AsyncIterator[RequestOutput]:
        task = asyncio.current_task()
        if task is not None:
            self._tasks[request_id] = task
        try:
            async for output in self.engine.generate(
                    request_id, prompt=prompt, prompt_token_ids=prompt_token_ids,
                    messages=messages, tools=tools, sampling_params=sampling_params):
                yield output
        finally:
            self._tasks.pop(request_id, None)

    def abort(self, request_id: str) -> None:
        task = self._tasks.pop(request_id, None)
        if task is not None:
            task.cancel()
        self.engine.abort(request_id)  # ignored when the request is already gone

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        return self.engine.encode(text, add_special_tokens)

    def decode(self, token_ids: list[int], skip_special_tokens: bool) -> str:
        return self.engine.decode(token_ids, skip_special_tokens)

    def apply_chat_template(self, messages: list[ChatMessage], add_generation_prompt: bool,
                            tools: list[ToolDefinition] | None) -> str:
        return self.engine.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                               tools=tools)

    def shutdown(self) -> None:
        self.engine.shutdown()
