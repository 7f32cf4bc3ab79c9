"""One replica: an `AsyncEngine` inside a Ray actor process. A plain class: `replica_set` makes
it a Ray actor, so this module imports neither Ray nor torch until an actor builds its engine."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..config import EngineConfig, ModelConfig
from ..inputs import ChatMessage, ToolDefinition
from ..outputs import RequestOutput
from ..reports import DeviceInfo, EngineStats, ResolvedSettings
from ..sampling_params import SamplingParams
from .deltas import DeltaEncoder, OutputDelta

logger = logging.getLogger("ziggurat.replicas")
MAX_EARLY_ABORTS = 4096


@dataclass(frozen=True)
class ReplicaDescription:
    """What every replica of a set has in common, read once from the first one."""

    model_config: ModelConfig
    resolved_settings: ResolvedSettings
    model_name: str
    max_model_len: int


@dataclass(frozen=True)
class RequestFailure:
    """The error that refused or ended a request on its replica (a bad prompt, a dead engine)."""

    request_id: str
    error: BaseException


@dataclass(frozen=True)
class ReplicaHeartbeat:
    """A replica's answer to the set's periodic poll."""

    node: str
    pid: int
    stats: EngineStats
    device_info: DeviceInfo
    tensor_parallel_size: int


class ReplicaActor:
    """Loads the model in its constructor (Ray restarts the actor, and so reloads, after a crash)
    and serves requests: `add` starts one, and `outputs`, one streaming generator per replica,
    carries every request's outputs to the set.

    One Ray item per engine step for all requests, instead of one per request and token: each
    item is a Ray object (a remote call's worth of CPU in this process, the raylet and the
    server), and on a small host that CPU is taken from the replicas' own steps.
    """

    def __init__(self, config: EngineConfig) -> None:
        from ..async_engine import AsyncEngine
        from ..startup_heap import freeze_startup_heap

        self.engine = AsyncEngine.from_config(config)
        freeze_startup_heap()  # this process is the replica's own
        # Requests added and not yet finished (a set's add is atomic across the two threads
        # that change it: this actor's event loop and the engine's loop thread).
        self._live: set[str] = set()
        # What `outputs` has yet to send, in the order the engine made it; appended to on the
        # engine's loop thread, taken on this actor's event loop.
        self._outbox: list[OutputDelta | RequestFailure] = []
        self._ready = asyncio.Event()
        self._wake_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        # Aborts of requests not live here: ones that arrived before their request's `add` (Ray
        # does not keep the order of an async actor's calls), and ones of requests that finished
        # meanwhile; oldest first, bounded.
        self._early_aborts: OrderedDict[str, None] = OrderedDict()

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
                                stats=self.engine.stats(), device_info=self.engine.device_info(),
                                tensor_parallel_size=self.engine.resolved_settings.tensor_parallel_size)

    async def add(self, request_id: str, prompt: str | None, prompt_token_ids: list[int] | None,
                  messages: list[ChatMessage] | None, tools: list[ToolDefinition] | None,
                  sampling_params: SamplingParams | None) -> None:
        """Queue the request (raising what `InferenceEngine.add_request` raises: the set's caller
        gets it); its outputs, or the error that ends it, go out through `outputs`."""
        self._loop = asyncio.get_running_loop()
        if request_id in self._early_aborts:
            del self._early_aborts[request_id]
            return
        encoder = DeltaEncoder()

        def deliver(item: RequestOutput | BaseException) -> None:  # on the engine's loop thread
            if isinstance(item, BaseException):
                self._live.discard(request_id)
                self._send(RequestFailure(request_id, item))
                return
            if item.finished:
                self._live.discard(request_id)
            self._send(encoder.encode(item))

        self._live.add(request_id)
        try:
            await self.engine.add(request_id, deliver, prompt=prompt,
                                  prompt_token_ids=prompt_token_ids, messages=messages,
                                  tools=tools, sampling_params=sampling_params)
        except BaseException:
            self._live.discard(request_id)
            raise

    def _send(self, item: OutputDelta | RequestFailure) -> None:
        """Called on the engine's loop thread: one wake-up of this actor's event loop covers all
        of a step's outputs."""
        self._outbox.append(item)
        if not self._wake_scheduled and self._loop is not None:
            self._wake_scheduled = True
            # A closed loop raises RuntimeError: the actor is going away.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        self._wake_scheduled = False  # before `outputs` takes the outbox: a later item wakes again
        self._ready.set()

    async def outputs(self) -> AsyncIterator[list[OutputDelta | RequestFailure]]:
        """Everything the engine produced since the previous item, for all requests (one item
        per step while the set keeps up). One consumer at a time: the set's."""
        self._loop = asyncio.get_running_loop()
        while True:
            await self._ready.wait()
            self._ready.clear()
            items, self._outbox = self._outbox, []
            if items:
                yield items

    def abort(self, request_id: str) -> None:
        if request_id in self._live:
            self._live.discard(request_id)
            self.engine.abort(request_id)
        else:
            self._early_aborts[request_id] = None
            while len(self._early_aborts) > MAX_EARLY_ABORTS:
                self._early_aborts.popitem(last=False)

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        return self.engine.encode(text, add_special_tokens)

    def decode(self, token_ids: list[int], skip_special_tokens: bool) -> str:
        return self.engine.decode(token_ids, skip_special_tokens)

    def apply_chat_template(self, messages: list[ChatMessage], add_generation_prompt: bool,
                            tools: list[ToolDefinition] | None, continue_final_message: bool,
                            template_kwargs: Mapping[str, Any] | None) -> str:
        return self.engine.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tools=tools,
            continue_final_message=continue_final_message, template_kwargs=template_kwargs)

    def shutdown(self) -> None:
        self.engine.shutdown()
