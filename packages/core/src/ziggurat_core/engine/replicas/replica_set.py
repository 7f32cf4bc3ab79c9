"""`ReplicaSet`: N engine replicas, each a Ray actor, behind the server's `ServingEngine`
interface. It routes each request (router.py), adds it on its replica, hands it the outputs that
arrive on the replica's one output stream (output_streams.py) and aborts it on its replica;
health.py keeps each replica's state from a periodic heartbeat.

Ray restarts a replica whose process dies (`max_restarts`); meanwhile its requests in flight end
with `ReplicaUnavailableError` (the server's 503), a request that had produced nothing yet goes to
another replica, and new requests go to the live ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import RayTaskError

from ..config import EngineConfig, ModelConfig
from ..errors import ReplicaUnavailableError
from ..inputs import ChatMessage, ToolDefinition
from ..outputs import RequestOutput
from ..reports import DeviceInfo, EngineStats, ReplicaReport, ResolvedSettings
from ..sampling_params import SamplingParams
from . import ray_runtime
from .actor import ReplicaActor, ReplicaDescription, RequestFailure
from .deltas import OutputAssembler, OutputDelta
from .faults import ReplicaLost, unwrap
from .health import ReplicaHealth
from .output_streams import OutputStreams
from .router import ReplicaRouter, prefix_key

# Ray restarts a dead replica however often it dies: a server should heal, not shrink.
MAX_RESTARTS = -1
# Concurrent calls one replica actor takes (its streams, heartbeats and tokenizer calls).
MAX_CONCURRENCY = 10_000
# How long the set waits for every replica's first heartbeat.
FIRST_HEARTBEAT_TIMEOUT_S = 30.0


Item = RequestOutput | BaseException


@dataclass
class _Inbox:
    """Where a request's outputs wait for its `generate`, filled from a stream thread."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Item]

    def put(self, item: Item) -> None:
        # A closed consumer loop raises RuntimeError: nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


def _put_all(puts: list[tuple[asyncio.Queue[Item], Item]]) -> None:
    for queue, item in puts:
        queue.put_nowait(item)


def _fill_inboxes(deliveries: list[tuple[_Inbox, Item]]) -> None:
    """Hand a step's outputs to their `generate`s: one call into each event loop for all of
    them, instead of a call (a write to the loop's wake-up socket, and often a wake-up) per
    request and step."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue[Item], Item]]] = {}
    for inbox, item in deliveries:
        by_loop.setdefault(inbox.loop, []).append((inbox.queue, item))
    for loop, puts in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening any more
            loop.call_soon_threadsafe(_put_all, puts)


@dataclass
class _InFlight:
    """A request placed on a replica: where its outputs go (its `generate`'s inbox, or a
    `submit` caller's callback), and what its deltas add up to."""

    index: int
    deliver: Callable[[Item], None]
    inbox: _Inbox | None = None
    assembler: OutputAssembler = field(default_factory=OutputAssembler)


class ReplicaSet:
    def __init__(self, config: EngineConfig, actors: list[Any], description: ReplicaDescription,
                 connection: ray_runtime.RayConnection) -> None:
        self._config = config
        self._description = description
        self._connection = connection
        self._router = ReplicaRouter(len(actors))
        # Guards replica states, router counts and the requests in flight: the event loop,
        # tokenizer worker threads, the stream threads and the heartbeat thread all read or
        # change them.
        self._lock = threading.Lock()
        self._requests: dict[str, _InFlight] = {}  # by request id
        self._stopping = threading.Event()
        self.started_at = time.time()
        self._health = ReplicaHealth(actors, self._router, self._lock, self._stopping)
        self._replicas = self._health.replicas
        self._health.start(first_timeout=FIRST_HEARTBEAT_TIMEOUT_S)
        self._streams = OutputStreams(self._health, self._stopping, self._dispatch,
                                      self._fail_requests)
        self._streams.start()

    @classmethod
    def start(cls, config: EngineConfig) -> ReplicaSet:
        """Start the replicas (blocking until every one has loaded its model)."""
        config.validate()
        connection = ray_runtime.RayConnection(config.ray_address)
        try:
            ray_runtime.check_resources(config.num_replicas, config.replica_cpus,
                                        config.replica_gpus)
            # One torch thread per reserved CPU unless told otherwise: replicas sharing a node
            # must not each spin a thread team over all of its cores.
            threads = config.num_threads or max(1, int(config.replica_cpus))
            replica_config = dataclasses.replace(config, num_replicas=1, ray_address=None,
                                                 num_threads=threads)
            actor_class = ray.remote(ReplicaActor).options(
                num_cpus=config.replica_cpus, num_gpus=config.replica_gpus,
                max_restarts=MAX_RESTARTS, max_task_retries=0, max_concurrency=MAX_CONCURRENCY)
            actors: list[Any] = [actor_class.remote(replica_config)
                                 for _ in range(config.num_replicas)]
            try:
                descriptions = ray.get([actor.describe.remote() for actor in actors])
            except RayTaskError as exc:
                for actor in actors:
                    ray.kill(actor, no_restart=True)
                cause = unwrap(exc)
                raise cause from None
        except BaseException:
            connection.close()
            raise
        return cls(config, actors, descriptions[0], connection)

    # ------------------------------------------------------------------ description
    @property
    def errored(self) -> bool:
        return False  # a stopped replica is restarted; the set itself has no loop to die

    @property
    def model_config(self) -> ModelConfig:
        return self._description.model_config

    @property
    def engine_config(self) -> EngineConfig:
        return self._config

    @property
    def resolved_settings(self) -> ResolvedSettings:
        return self._description.resolved_settings

    @property
    def model_name(self) -> str:
        return self._description.model_name

    @property
    def max_model_len(self) -> int:
        return self._description.max_model_len

    # ------------------------------------------------------------------ tokenizer
    # Every replica holds the same tokenizer; any live one answers (blocking: worker threads).
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._call_any(lambda actor: actor.encode.remote(text, add_special_tokens))

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._call_any(lambda actor: actor.decode.remote(token_ids, skip_special_tokens))

    def apply_chat_template(self, messages: list[ChatMessage], *, add_generation_prompt: bool,
                            tools: list[ToolDefinition] | None = None,
                            continue_final_message: bool = False,
                            template_kwargs: Mapping[str, Any] | None = None) -> str:
        return self._call_any(lambda actor: actor.apply_chat_template.remote(
            messages, add_generation_prompt, tools, continue_final_message, template_kwargs))

    def _call_any(self, call: Callable[[Any], Any]) -> Any:
        tried: set[int] = set()
        while True:
            with self._lock:
                index = self._router.choose(None, self._health.live(tried))
            if index is None:
                raise self._health.unavailable()
            try:
                return ray.get(call(self._replicas[index].actor))
            except Exception as exc:
                error = unwrap(exc)
                if not isinstance(error, ReplicaLost):
                    raise error from None
                self._health.mark_lost(index)
                tried.add(index)

    # ------------------------------------------------------------------ requests
    async def generate(
        self,
        request_id: str,
        *,
        prompt: str | None = None,
        prompt_token_ids: list[int] | None = None,
        messages: list[ChatMessage] | None = None,
        tools: list[ToolDefinition] | None = None,
        sampling_params: SamplingParams | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Stream the request from one replica. A replica lost before the first output hands the
        request to another one; lost later, the request fails with ReplicaUnavailableError."""
        key = prefix_key(prompt_token_ids, self._router.prefix_tokens)
        tried: set[int] = set()
        while True:
            inbox = _Inbox(asyncio.get_running_loop(), asyncio.Queue())
            index = self._place(request_id, key, tried, inbox.put, inbox)
            replica = self._replicas[index]
            produced = finished = False
            try:
                await replica.actor.add.remote(request_id, prompt, prompt_token_ids, messages,
                                               tools, sampling_params)
                while not finished:
                    item = await inbox.queue.get()
                    if isinstance(item, BaseException):
                        raise item
                    produced = True
                    finished = item.finished
                    yield item
                return
            except Exception as exc:
                error = unwrap(exc)
                if not isinstance(error, ReplicaLost):
                    raise error from None
                self._health.mark_lost(index)
                if produced:
                    raise ReplicaUnavailableError(
                        f"replica {index} stopped while serving the request; Ray is restarting "
                        "it, retry the request") from None
                tried.add(index)
            finally:
                self._release(request_id, index)
                if not finished:
                    replica.actor.abort.remote(request_id)  # no-op if the replica is gone

    def _place(self, request_id: str, key: bytes | None, tried: set[int],
               deliver: Callable[[Item], None], inbox: _Inbox | None = None) -> int:
        with self._lock:
            index = self._router.choose(key, self._health.live(tried))
            if index is None:
                raise self._health.unavailable()
            self._router.start(index, key)
            self._requests[request_id] = _InFlight(index, deliver, inbox)
            return index

    def _release(self, request_id: str, index: int) -> None:
        """The request no longer waits for replica `index` (done, failed or aborted); a second
        release changes nothing."""
        with self._lock:
            in_flight = self._requests.get(request_id)
            if in_flight is not None and in_flight.index == index:
                del self._requests[request_id]
                self._router.finish(index)

    def submit(
        self,
        request_id: str,
        deliver: Callable[[RequestOutput | BaseException], None],
        *,
        prompt: str | None = None,
        prompt_token_ids: list[int] | None = None,
        messages: list[ChatMessage] | None = None,
        tools: list[ToolDefinition] | None = None,
        sampling_params: SamplingParams | None = None,
    ) -> None:
        """Place the request and add it on its replica (blocking: for callers without an event
        loop), raising what `InferenceEngine.add_request` raises. Its outputs, or the error that
        ends it, then go to `deliver`, called on a stream thread (it must return at once)."""
        key = prefix_key(prompt_token_ids, self._router.prefix_tokens)
        tried: set[int] = set()
        while True:
            index = self._place(request_id, key, tried, deliver)
            try:
                ray.get(self._replicas[index].actor.add.remote(
                    request_id, prompt, prompt_token_ids, messages, tools, sampling_params))
                return
            except Exception as exc:
                self._release(request_id, index)
                error = unwrap(exc)
                if not isinstance(error, ReplicaLost):
                    raise error from None
                self._health.mark_lost(index)
                tried.add(index)

    def abort(self, request_id: str) -> None:
        with self._lock:
            in_flight = self._requests.get(request_id)
        if in_flight is not None:
            self._release(request_id, in_flight.index)
            self._replicas[in_flight.index].actor.abort.remote(request_id)

    # ------------------------------------------------------------------ output streams
    def _dispatch(self, index: int, items: list[OutputDelta | RequestFailure]) -> None:
        with self._lock:
            targets = [self._requests.get(item.request_id) for item in items]
        to_inboxes: list[tuple[_Inbox, Item]] = []
        for item, in_flight in zip(items, targets, strict=True):
            if in_flight is None or in_flight.index != index:
                continue  # aborted, or handed to another replica meanwhile
            result: Item
            if isinstance(item, RequestFailure):
                self._release(item.request_id, index)
                result = item.error
            else:
                result = in_flight.assembler.apply(item)
                if result.finished:
                    self._release(item.request_id, index)
            if in_flight.inbox is not None:
                to_inboxes.append((in_flight.inbox, result))
            else:
                in_flight.deliver(result)
        _fill_inboxes(to_inboxes)

    def _fail_requests(self, index: int, error: BaseException) -> None:
        with self._lock:
            lost = [(request_id, r) for request_id, r in self._requests.items()
                    if r.index == index]
        for request_id, in_flight in lost:
            self._release(request_id, index)
            in_flight.deliver(error)

    # ------------------------------------------------------------------ reports
    def replicas(self) -> list[ReplicaReport]:
        return self._health.reports()

    def stats(self) -> EngineStats:
        return self._health.stats(self.started_at, self.errored)

    def device_info(self) -> DeviceInfo:
        return self._health.device_info()

    def shutdown(self) -> None:
        self._stopping.set()
        self._health.join()
        for replica in self._replicas:
            ray.kill(replica.actor, no_restart=True)
        self._streams.join()
        self._connection.close()
