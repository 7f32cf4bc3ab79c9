"""The SSE event sequence both generation endpoints send, whatever their chunk shapes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from typing import Protocol

from ziggurat_core.engine.outputs import RequestOutput
from ziggurat_core.protocol import ResponseModel, Usage

from .generation import Generation, engine_error_to_api
from .response_meta import usage_of
from .shutdown import ServerShuttingDown
from .sse import DONE_EVENT, sse_event


class Chunker(Protocol):
    def output_chunks(self, prompt_index: int, output: RequestOutput) -> Iterable[ResponseModel]: ...

    def usage_chunk(self, usage: Usage) -> ResponseModel: ...


async def stream_events(
    generation: Generation,
    firsts: list[RequestOutput],
    chunker: Chunker,
    include_usage: bool,
    head: Iterable[ResponseModel] = (),
    prompt_opening: Callable[[int, RequestOutput], Iterable[ResponseModel]] | None = None,
) -> AsyncIterator[str]:
    """`head` chunks, then per prompt its `prompt_opening` chunks and its deltas as they come,
    the usage chunk when asked for, and `[DONE]`."""
    latest = list(firsts)
    try:
        for chunk in head:
            yield sse_event(chunk)
        for prompt_index, output in enumerate(firsts):
            if prompt_opening is not None:
                for chunk in prompt_opening(prompt_index, output):
                    yield sse_event(chunk)
            for chunk in chunker.output_chunks(prompt_index, output):
                yield sse_event(chunk)
        async for prompt_index, output in generation.rest():
            latest[prompt_index] = output
            for chunk in chunker.output_chunks(prompt_index, output):
                yield sse_event(chunk)
        if include_usage:
            yield sse_event(chunker.usage_chunk(usage_of(latest)))
        yield DONE_EVENT
    except Exception as exc:
        # Headers are gone already: the error travels as an event, then the stream ends.
        yield sse_event(engine_error_to_api(exc).body())
        if isinstance(exc, ServerShuttingDown):
            yield DONE_EVENT  # ended on purpose, not broken: the stream closes as usual
