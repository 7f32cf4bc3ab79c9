"""AsyncEngine: the engine stepping in a background thread, served as async iterators.

Only the loop thread touches the InferenceEngine: callers hand it commands through a queue and
get outputs back on their own event loop, so no lock is held across a model step.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .config import EngineConfig, ModelConfig
from .errors import EngineDeadError
from .inputs import ChatMessage, ToolDefinition
from .llm_engine import InferenceEngine
from .outputs import RequestOutput
from .reports import DeviceInfo, EngineStats, ReplicaReport, ResolvedSettings
from .sampling_params import SamplingParams
from .stream_interval import OutputSink, PacedStream
from .tokenizer import Tokenizer

logger = logging.getLogger("ziggurat.engine")


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[RequestOutput | BaseException]

    def put(self, item: RequestOutput | BaseException) -> None:
        # A closed consumer loop raises RuntimeError: nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class AsyncEngine:
    def __init__(self, engine_factory: Callable[[], InferenceEngine]) -> None:
        """Build the engine with `engine_factory` on the loop thread and start stepping.

        Building and stepping on one thread matters on CPU: torch's OpenMP worker team belongs
        to the thread that first ran a parallel region, and a second team spinning on the same
        cores slows every step many times over.
        """
        self._commands: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = (
            queue.SimpleQueue()
        )
        self._wakeup = threading.Event()
        # By request id; used by the loop thread only.
        self._streams: dict[str, PacedStream] = {}
        self._steps = 0  # steps run; a stream sends on every stream_interval-th (stream_interval.py)
        self._stream_interval = 1  # the engine's config says, once it is built
        self._stopping = False
        self.errored = False
        self.error: BaseException | None = None
        self.started_at = time.time()
        self._snapshot: EngineStats  # set by the loop thread before `_ready` resolves
        self._ready: concurrent.futures.Future[InferenceEngine] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, args=(engine_factory,), name="ziggurat-engine", daemon=True
        )
        self._thread.start()
        self.engine: InferenceEngine = self._ready.result()  # re-raises a load failure

    @classmethod
    def from_config(cls, config: EngineConfig | None = None, **overrides: Any) -> AsyncEngine:
        """Load the model (blocking: call it from a worker thread) and start stepping."""
        return cls(lambda: InferenceEngine(config, streaming=True, **overrides))

    # ------------------------------------------------------------------ properties
    @property
    def tokenizer(self) -> Tokenizer:
        return self.engine.tokenizer

    @property
    def model_config(self) -> ModelConfig:
        return self.engine.model_config

    @property
    def engine_config(self) -> EngineConfig:
        return self.engine.config

    @property
    def model_name(self) -> str:
        return self.engine.model_name

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def resolved_settings(self) -> ResolvedSettings:
        return self.engine.resolved_settings

    # ------------------------------------------------------------------ tokenizer
    # The tokenizer is read-only once loaded, so these run on the caller's thread.
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.engine.tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.engine.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[ChatMessage], *, add_generation_prompt: bool,
                            tools: list[ToolDefinition] | None = None,
                            continue_final_message: bool = False,
                            template_kwargs: Mapping[str, Any] | None = None) -> str:
        """The prompt text of a conversation; encode it with `add_special_tokens=False`.
        `continue_final_message` leaves the last message open for the model to continue;
        `template_kwargs` are further template variables."""
        return self.engine.tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tools=tools,
            continue_final_message=continue_final_message, **(template_kwargs or {}))

    # ------------------------------------------------------------------ public API
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
        """Yield the request's outputs (with deltas) until it finishes; leaving early aborts it."""
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        await self.add(request_id, stream.put, prompt=prompt, prompt_token_ids=prompt_token_ids,
                       messages=messages, tools=tools, sampling_params=sampling_params)
        finished = False
        try:
            while True:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            if not finished:
                self.abort(request_id)

    async def add(
        self,
        request_id: str,
        deliver: OutputSink,
        *,
        prompt: str | None = None,
        prompt_token_ids: list[int] | None = None,
        messages: list[ChatMessage] | None = None,
        tools: list[ToolDefinition] | None = None,
        sampling_params: SamplingParams | None = None,
    ) -> None:
        """Queue the request (raising what `InferenceEngine.add_request` raises). The loop thread
        then calls `deliver` with its outputs (the first and the last at once, between them one
        every `stream_interval` steps, each with the deltas since the previous one), or with the
        error that ends it, until it finishes or is aborted; `deliver` must return at once."""
        self._check_alive()

        def add() -> None:
            self.engine.add_request(
                request_id, prompt, sampling_params,
                prompt_token_ids=prompt_token_ids, messages=messages, tools=tools,
            )
            self._streams[request_id] = PacedStream(deliver)

        try:
            await asyncio.wrap_future(self._submit(add))
        except asyncio.CancelledError:
            self.abort(request_id)  # it may have been added before the cancellation landed
            raise

    def abort(self, request_id: str) -> None:
        """Abort from any thread; returns at once, the loop frees the blocks before its next step."""
        if self.errored or self._stopping:
            return

        def do_abort() -> None:
            self._streams.pop(request_id, None)
            self.engine.abort_request(request_id)

        self._submit(do_abort)

    def stats(self) -> EngineStats:
        """The loop's latest snapshot of scheduler and cache counters (read without stopping it);
        the uptime counts from the start of loading."""
        return dataclasses.replace(self._snapshot, uptime_s=time.time() - self.started_at,
                                   errored=self.errored)

    def device_info(self) -> DeviceInfo:
        """The engine's own devices and the host's CPU as they are now (free memory changes)."""
        from .device import device_info

        return device_info([self.engine.runner.device])

    def replicas(self) -> list[ReplicaReport]:
        """One engine in this process: no replica set (engine/replicas) to report."""
        return []

    def shutdown(self, timeout: float = 10.0) -> None:
        self._stopping = True
        self._wakeup.set()
        self._thread.join(timeout)
        for stream in list(self._streams.values()):
            stream.fail(EngineDeadError("the engine was shut down"))
        self._streams.clear()

    # ------------------------------------------------------------------ loop thread
    def _check_alive(self) -> None:
        if self.errored:
            raise EngineDeadError(f"the engine stopped after an internal error: {self.error!r}")
        if self._stopping:
            raise EngineDeadError("the engine is shutting down")

    def _submit(self, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._commands.put((fn, future))
        self._wakeup.set()
        return future

    def _drain_commands(self) -> None:
        while True:
            try:
                fn, future = self._commands.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the caller, the loop lives on
                future.set_exception(exc)

    def _run(self, engine_factory: Callable[[], InferenceEngine]) -> None:
        try:
            engine = engine_factory()
        except BaseException as exc:
            self._ready.set_exception(exc)
            return
        self.engine = engine
        self._stream_interval = engine.config.stream_interval
        self._snapshot = engine.stats()
        self._ready.set_result(engine)
        try:
            while not self._stopping:
                self._wakeup.clear()
                self._drain_commands()
                if not self.engine.has_unfinished_requests():
                    self._snapshot = self.engine.stats()
                    self._wakeup.wait(0.5)
                    continue
                outputs = self.engine.step()
                self._snapshot = self.engine.stats()
                self._steps += 1
                sending_step = self._steps % self._stream_interval == 0
                for output in outputs:
                    stream = self._streams.get(output.request_id)
                    if stream is not None:
                        stream.push(output, sending_step)
                        if output.finished:
                            del self._streams[output.request_id]
        except BaseException as exc:
            logger.exception("engine loop died")
            self.error = exc
            self.errored = True
            dead = EngineDeadError(f"the engine stopped after an internal error: {exc!r}")
            for stream in list(self._streams.values()):
                stream.fail(dead)
            self._streams.clear()
            self._fail_pending(dead)
        finally:
            engine.close()  # tensor-parallel ranks stop with the loop that drives them

    def _fail_pending(self, error: BaseException) -> None:
        while True:
            try:
                _, future = self._commands.get_nowait()
            except queue.Empty:
                return
            if future.set_running_or_notify_cancel():
                future.set_exception(error)
