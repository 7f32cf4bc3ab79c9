"""One HTTP request's work in the engine: one engine request per prompt, all with the same
sampling parameters. Owns the admission slots, the metrics and the abort-on-exit guarantee."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ziggurat_core.engine.inputs import PromptInput
from ziggurat_core.engine.outputs import RequestOutput
from ziggurat_core.engine.sampling_params import SamplingParams

from .disconnect import ClientDisconnected, run_unless_disconnected
from .errors import ServerHTTPError, from_engine_error
from .serving_engine import ServingEngine
from .shutdown import ServerShuttingDown, ShutdownDrain
from .state import ServerState

logger = logging.getLogger("ziggurat_server")


@dataclass
class _Progress:
    """Per-prompt bookkeeping for metrics: which samples finished, when the last token came.
    (The first token's time is the engine's, in `RequestOutput.metrics`.)"""

    last_token_at: float | None = None
    finished: set[int] = field(default_factory=set)
    done: bool = False


class Generation:
    def __init__(self, state: ServerState, engine: ServingEngine, prompts: list[PromptInput],
                 params: SamplingParams, id_prefix: str) -> None:
        self.state = state
        self.engine = engine
        self.prompts = prompts
        self.params = params
        base = uuid.uuid4().hex
        self.request_ids = [f"{id_prefix}-{base}-{i}" for i in range(len(prompts))]
        self.arrival = time.monotonic()
        self._iterators: list[AsyncIterator[RequestOutput]] = []
        self._progress = [_Progress() for _ in prompts]
        self._admitted = 0
        self._refused = False
        self._closed = False

    @property
    def num_sequences(self) -> int:
        return self.params.n * len(self.prompts)

    # ------------------------------------------------------------------ life cycle
    async def start(self, receive: Any) -> list[RequestOutput]:
        """Admit, submit every prompt and wait for each one's first output.

        Engine validation errors surface here (before any response byte is sent) as
        ServerHTTPError.
        A client that disconnects meanwhile gets its requests aborted (ClientDisconnected).
        """
        self.state.admission.admit(self.num_sequences)
        self._admitted = self.num_sequences
        self._iterators = [
            self.engine.generate(request_id, sampling_params=self.params, **prompt)
            for request_id, prompt in zip(self.request_ids, self.prompts, strict=True)
        ]
        try:
            firsts = await run_unless_disconnected(
                receive, self.state.drain.unless_expired(self._first_outputs()))
        except (ClientDisconnected, ServerHTTPError, asyncio.CancelledError):
            await self.close()
            raise
        except Exception as exc:
            self._refused = True  # the engine turned it down: nothing ran, nothing aborted
            await self.close()
            raise engine_error_to_api(exc) from None
        for index, output in enumerate(firsts):
            self.observe(index, output)
        return firsts

    async def _first_outputs(self) -> list[RequestOutput]:
        if len(self._iterators) == 1:
            return [await anext(self._iterators[0])]
        results = await asyncio.gather(*(anext(it) for it in self._iterators),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return [r for r in results if isinstance(r, RequestOutput)]

    async def rest(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        """Outputs after the first ones, tagged with their prompt index, as they arrive; raises
        ServerShuttingDown when the shutdown timeout expires first."""
        pending = [i for i, progress in enumerate(self._progress) if not progress.done]
        iterators = {i: self._iterators[i] for i in pending}
        async for index, output in _merge(iterators, self.state.drain):
            self.observe(index, output)
            yield index, output

    async def finals(self, firsts: list[RequestOutput], receive: Any) -> list[RequestOutput]:
        """Wait for every prompt's last output (non-streaming), aborting if the client leaves."""

        async def collect() -> list[RequestOutput]:
            latest = list(firsts)
            async for index, output in self.rest():
                latest[index] = output
            return latest

        try:
            return await run_unless_disconnected(receive, collect())
        except (ClientDisconnected, ServerHTTPError):
            raise
        except Exception as exc:
            raise engine_error_to_api(exc) from None

    async def close(self) -> None:
        """Abort whatever has not finished, free the admission slots. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for iterator in self._iterators:
            with contextlib.suppress(Exception):
                await iterator.aclose()  # type: ignore[attr-defined]
        for request_id, progress in zip(self.request_ids, self._progress, strict=True):
            if progress.done:
                continue
            self.engine.abort(request_id)  # the engine ignores ids it no longer knows
            if not self._refused:
                self.state.metrics.finished_sequences.labels("abort").inc(
                    self.params.n - len(progress.finished))
        self.state.admission.release(self._admitted)
        self._admitted = 0

    # ------------------------------------------------------------------ metrics
    def observe(self, index: int, output: RequestOutput) -> None:
        progress = self._progress[index]
        metrics = self.state.metrics
        now = time.monotonic()
        new_tokens = sum(len(c.delta_token_ids) for c in output.outputs)
        if new_tokens:
            if progress.last_token_at is None:
                first_token_at = output.metrics.first_token_time if output.metrics else None
                metrics.time_to_first_token.observe(
                    (first_token_at if first_token_at is not None else now) - self.arrival)
                new_tokens_after_first = new_tokens - 1
            else:
                new_tokens_after_first = new_tokens
            if progress.last_token_at is not None and new_tokens_after_first > 0:
                gap = (now - progress.last_token_at) / new_tokens_after_first
                for _ in range(new_tokens_after_first):
                    metrics.inter_token_latency.observe(gap)
            progress.last_token_at = now
            metrics.generation_tokens.inc(new_tokens)
        for completion in output.outputs:
            if completion.finish_reason is not None and completion.index not in progress.finished:
                progress.finished.add(completion.index)
                metrics.finished_sequences.labels(completion.finish_reason).inc()
        if output.finished and not progress.done:
            progress.done = True
            metrics.prompt_tokens.inc(len(output.prompt_token_ids))
            metrics.request_latency.observe(now - self.arrival)


async def _merge(iterators: dict[int, AsyncIterator[RequestOutput]], drain: ShutdownDrain,
                 ) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Interleave engine streams in arrival order, until the shutdown timeout expires."""
    queue: asyncio.Queue[tuple[int, RequestOutput | BaseException | None]] = asyncio.Queue()

    async def expire() -> None:
        await drain.wait_expired()
        await queue.put((-1, ServerShuttingDown()))

    async def pump(index: int, iterator: AsyncIterator[RequestOutput]) -> None:
        try:
            async for output in iterator:
                await queue.put((index, output))
        except Exception as exc:
            await queue.put((index, exc))
        finally:
            await queue.put((index, None))

    tasks = [asyncio.ensure_future(pump(i, it)) for i, it in iterators.items()]
    remaining = len(tasks)
    tasks.append(asyncio.ensure_future(expire()))
    try:
        while remaining:
            index, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def engine_error_to_api(exc: Exception) -> ServerHTTPError:
    """Engine errors become ServerHTTPErrors; unexpected ones are logged here and shown as a bare 500."""
    mapped = from_engine_error(exc)
    if mapped.status_code == 500:
        logger.error("request failed: %r", exc, exc_info=exc)
    return mapped
