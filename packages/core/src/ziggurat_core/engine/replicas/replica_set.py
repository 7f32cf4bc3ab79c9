"""`ReplicaSet`: N engine replicas, each a Ray actor, behind the server's `ServingEngine`
interface. It routes each request (router.py), adds it on its replica, hands it the outputs that
arrive on the replica's one output stream (a Ray streaming generator, read by a thread per
replica), aborts it on its replica, and keeps each replica's state from a periodic heartbeat.

Ray restarts a replica whose process dies (`max_restarts`); meanwhile its requests in flight end
with `ReplicaUnavailableError` (the server's 503), a request that had produced nothing yet goes to
another replica, and new requests go to the live ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import ray
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

from ..config import EngineConfig, ModelConfig
from ..errors import ReplicaUnavailableError
from ..inputs import ChatMessage, ToolDefinition
from ..outputs import RequestOutput
from ..reports import DeviceInfo, EngineStats, ReplicaReport, ResolvedSettings
from ..sampling_params import SamplingParams
from . import ray_runtime
from .actor import ReplicaActor, ReplicaDescription, ReplicaHeartbeat, RequestFailure
from .deltas import OutputAssembler, OutputDelta
from .router import ReplicaRouter, prefix_key
from .stats import combine_stats

logger = logging.getLogger("ziggurat.replicas")

T = TypeVar("T")
HEARTBEAT_INTERVAL_S = 0.5
# Ray restarts a dead replica however often it dies: a server should heal, not shrink.
MAX_RESTARTS = -1
# Concurrent calls one replica actor takes (its streams, heartbeats and tokenizer calls).
MAX_CONCURRENCY = 10_000
# How often a stream thread looks whether its restarting replica is back.
STREAM_REOPEN_POLL_S = 0.05
STREAM_JOIN_TIMEOUT_S = 5.0
_LOST = (RayActorError, ActorUnavailableError)


class _ReplicaLost(ReplicaUnavailableError):
    """The replica's process went away under a call: `generate` and `submit` retry a request
    that it had not started on another replica; one it had started fails with this error."""


@dataclass
class _Inbox:
    """Where a request's outputs wait for its `generate`, filled from a stream thread."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[RequestOutput | BaseException]

    def put(self, item: RequestOutput | BaseException) -> None:
        # A closed consumer loop raises RuntimeError: nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


@dataclass
class _InFlight:
    """A request placed on a replica: where its outputs go, and what its deltas add up to."""

    index: int
    deliver: Callable[[RequestOutput | BaseException], None]
    assembler: OutputAssembler = field(default_factory=OutputAssembler)


@dataclass
class _Replica:
    index: int
    actor: Any  # ray.actor.ActorHandle of ReplicaActor
    state: str = "starting"  # "starting" | "up" | "restarting"
    heartbeat: ReplicaHeartbeat | None = None
    pending: Any = None  # the heartbeat ObjectRef in flight


def _unwrap(exc: BaseException) -> BaseException:
    """What a replica raised, as the engine would have raised it in process."""
    if isinstance(exc, _LOST):
        return _ReplicaLost(str(exc))
    if isinstance(exc, RayTaskError) and isinstance(exc.cause, Exception):
        return exc.cause
    return exc


class ReplicaSet:
    def __init__(self, config: EngineConfig, actors: list[Any], description: ReplicaDescription,
                 connection: ray_runtime.RayConnection) -> None:
        self._config = config
        self._description = description
        self._connection = connection
        self._replicas = [_Replica(index, actor, state="up") for index, actor in enumerate(actors)]
        self._router = ReplicaRouter(len(actors))
        # Guards replica states and router counts: the event loop, tokenizer worker threads and
        # the heartbeat thread all read or change them.
        self._lock = threading.Lock()
        self._requests: dict[str, _InFlight] = {}  # by request id
        self._stopping = threading.Event()
        self.started_at = time.time()
        self._heartbeats = threading.Thread(target=self._heartbeat_loop, daemon=True,
                                            name="ziggurat-replica-heartbeat")
        self._poll_heartbeats(timeout=30.0)
        self._heartbeats.start()
        self._streams = [threading.Thread(target=self._consume, args=(replica,), daemon=True,
                                          name=f"ziggurat-replica-{replica.index}-outputs")
                         for replica in self._replicas]
        for thread in self._streams:
            thread.start()

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
                cause = _unwrap(exc)
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
                            tools: list[ToolDefinition] | None = None) -> str:
        return self._call_any(lambda actor: actor.apply_chat_template.remote(
            messages, add_generation_prompt, tools))

    def _call_any(self, call: Callable[[Any], Any]) -> Any:
        tried: set[int] = set()
        while True:
            with self._lock:
                live = [r for r in self._replicas if r.state == "up" and r.index not in tried]
                index = self._router.choose(None, [r.index for r in live])
            if index is None:
                raise self._unavailable()
            try:
                return ray.get(call(self._replicas[index].actor))
            except Exception as exc:
                error = _unwrap(exc)
                if not isinstance(error, _ReplicaLost):
                    raise error from None
                self._mark_lost(index)
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
            index = self._place(request_id, key, tried, inbox.put)
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
                error = _unwrap(exc)
                if not isinstance(error, _ReplicaLost):
                    raise error from None
                self._mark_lost(index)
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
               deliver: Callable[[RequestOutput | BaseException], None]) -> int:
        with self._lock:
            live = [r.index for r in self._replicas if r.state == "up" and r.index not in tried]
            index = self._router.choose(key, live)
            if index is None:
                raise self._unavailable()
            self._router.start(index, key)
            self._requests[request_id] = _InFlight(index, deliver)
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
                error = _unwrap(exc)
                if not isinstance(error, _ReplicaLost):
                    raise error from None
                self._mark_lost(index)
                tried.add(index)

    def abort(self, request_id: str) -> None:
        with self._lock:
            in_flight = self._requests.get(request_id)
        if in_flight is not None:
            self._release(request_id, in_flight.index)
            self._replicas[in_flight.index].actor.abort.remote(request_id)

    # ------------------------------------------------------------------ output streams
    def _consume(self, replica: _Replica) -> None:
        """The replica's output stream, handed out to its requests (a thread per replica).
        When the replica is lost, its requests get `_ReplicaLost`, and the stream is opened
        again once Ray has restarted it."""
        while not self._stopping.is_set():
            if replica.state != "up":
                self._stopping.wait(STREAM_REOPEN_POLL_S)
                continue
            stream = replica.actor.outputs.options(num_returns="streaming").remote()
            try:
                for ref in stream:
                    self._dispatch(replica.index, ray.get(ref))
                raise _ReplicaLost("the replica's output stream ended")
            except Exception as exc:
                if self._stopping.is_set():
                    return
                error = _unwrap(exc)
                if not isinstance(error, _ReplicaLost):
                    logger.error("replica %d output stream failed: %r", replica.index, error)
                self._mark_lost(replica.index)
                self._fail_requests(replica.index, _ReplicaLost(str(error)))

    def _dispatch(self, index: int, items: list[OutputDelta | RequestFailure]) -> None:
        with self._lock:
            targets = [self._requests.get(item.request_id) for item in items]
        for item, in_flight in zip(items, targets, strict=True):
            if in_flight is None or in_flight.index != index:
                continue  # aborted, or handed to another replica meanwhile
            if isinstance(item, RequestFailure):
                self._release(item.request_id, index)
                in_flight.deliver(item.error)
                continue
            output = in_flight.assembler.apply(item)
            if output.finished:
                self._release(item.request_id, index)
            in_flight.deliver(output)

    def _fail_requests(self, index: int, error: BaseException) -> None:
        with self._lock:
            lost = [(request_id, r) for request_id, r in self._requests.items()
                    if r.index == index]
        for request_id, in_flight in lost:
            self._release(request_id, index)
            in_flight.deliver(error)

    def _unavailable(self) -> ReplicaUnavailableError:
        states = ", ".join(f"{r.index}: {r.state}" for r in self._replicas)
        return ReplicaUnavailableError(f"no replica is up to serve the request ({states}); "
                                       "retry shortly")

    # ------------------------------------------------------------------ replica states
    def _mark_lost(self, index: int) -> None:
        with self._lock:
            replica = self._replicas[index]
            if replica.state == "up":
                logger.warning("replica %d stopped; Ray restarts it", index)
                replica.state = "restarting"
                self._router.forget(index)

    def _heartbeat_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._poll_heartbeats(timeout=HEARTBEAT_INTERVAL_S)
            except Exception:  # a failed poll must not end the polling: states would freeze
                logger.exception("replica heartbeat failed")
            self._stopping.wait(HEARTBEAT_INTERVAL_S)

    def _poll_heartbeats(self, timeout: float) -> None:
        """Ask every replica for a heartbeat (a call to a restarting replica waits for its new
        process) and apply the answers that come within `timeout`."""
        for replica in self._replicas:
            if replica.pending is None:
                replica.pending = replica.actor.heartbeat.remote()
        refs = [r.pending for r in self._replicas]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        answered = {ref.hex() for ref in ready}
        for replica in self._replicas:
            if replica.pending is None or replica.pending.hex() not in answered:
                continue
            ref, replica.pending = replica.pending, None
            try:
                heartbeat: ReplicaHeartbeat = ray.get(ref)
            except Exception as exc:
                if isinstance(_unwrap(exc), _ReplicaLost):
                    self._mark_lost(replica.index)
                    continue
                raise
            with self._lock:
                if replica.heartbeat is not None and replica.heartbeat.pid != heartbeat.pid:
                    self._router.forget(replica.index)  # a new process: an empty prefix cache
                if replica.state != "up":
                    logger.info("replica %d is up (pid %d)", replica.index, heartbeat.pid)
                replica.state = "up"
                replica.heartbeat = heartbeat

    # ------------------------------------------------------------------ reports
    def replicas(self) -> list[ReplicaReport]:
        with self._lock:
            return [ReplicaReport(
                id=r.index, state=r.state,
                node=r.heartbeat.node if r.heartbeat else None,
                pid=r.heartbeat.pid if r.heartbeat else None,
                stats=r.heartbeat.stats if r.heartbeat else None,
                outstanding=self._router.outstanding[r.index],
                tensor_parallel_size=r.heartbeat.tensor_parallel_size if r.heartbeat else None,
            ) for r in self._replicas]

    def stats(self) -> EngineStats:
        with self._lock:
            snapshots = [r.heartbeat.stats for r in self._replicas
                         if r.heartbeat is not None and r.state == "up"]
        return combine_stats(snapshots, uptime_s=time.time() - self.started_at,
                             errored=self.errored)

    def device_info(self) -> DeviceInfo:
        with self._lock:
            for replica in self._replicas:
                if replica.heartbeat is not None:
                    return replica.heartbeat.device_info
        raise self._unavailable()

    def shutdown(self) -> None:
        self._stopping.set()
        if self._heartbeats.is_alive():
            self._heartbeats.join()
        for replica in self._replicas:
            ray.kill(replica.actor, no_restart=True)
        for thread in self._streams:
            thread.join(STREAM_JOIN_TIMEOUT_S)
        self._connection.close()
