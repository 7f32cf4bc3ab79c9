"""The SSE event sequence both generation endpoints send, whatever their chunk shapes."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from contextlib import aclosing
from typing import Protocol

from ziggurat_core.engine.outputs import RequestOutput
from ziggurat_core.protocol import ChatCompletionChunk, Completion, ErrorResponse, Usage

from .generation import Generation, engine_error_to_api
from .response_meta import usage_of
from .shutdown import SHUTDOWN_ERROR_CODE
from .sse import DONE_EVENT, sse_event
from .timings import timings_of

# A stream chunk of either endpoint (the legacy endpoint streams `Completion` bodies).
Chunk = ChatCompletionChunk | Completion


class Chunker(Protocol):
    def output_chunks(self, prompt_index: int, output: RequestOutput) -> Iterable[Chunk]: ...

    def usage_chunk(self, usage: Usage) -> Chunk: ...


async def stream_chunks(
    generation: Generation,
    firsts: list[RequestOutput],
    chunker: Chunker,
    include_usage: bool,
    head: Iterable[Chunk] = (),
    prompt_opening: Callable[[int, RequestOutput], Iterable[Chunk]] | None = None,
    cached: bool | None = None,
) -> AsyncGenerator[Chunk | ErrorResponse, None]:
    """`head` chunks, then per prompt its `prompt_opening` chunks and its deltas as they come,
    then the usage chunk when asked for. The last chunk carries the `timings` (and `cached`
    when given). A failure ends the stream with an error body instead."""
    latest = list(firsts)

    def last_chunk(chunk: Chunk) -> Chunk:
        chunk.timings = timings_of(latest)
        if cached is not None:
            chunk.cached = cached
        return chunk

    def deltas(prompt_index: int, output: RequestOutput, more_to_come: bool) -> list[Chunk]:
        chunks = list(chunker.output_chunks(prompt_index, output))
        # Without a usage chunk, the chunk that finishes the last choice ends the stream.
        if chunks and not include_usage and not more_to_come:
            last_chunk(chunks[-1])
        return chunks

    try:
        for chunk in head:
            yield chunk
        for prompt_index, output in enumerate(firsts):
            if prompt_opening is not None:
                for chunk in prompt_opening(prompt_index, output):
                    yield chunk
            more = prompt_index + 1 < len(firsts) or not all(o.finished for o in latest)
            for chunk in deltas(prompt_index, output, more):
                yield chunk
        async for prompt_index, output in generation.rest():
            latest[prompt_index] = output
            for chunk in deltas(prompt_index, output, not all(o.finished for o in latest)):
                yield chunk
        if include_usage:
            yield last_chunk(chunker.usage_chunk(usage_of(latest)))
    except Exception as exc:
        # Headers are gone already: the error travels as an event, then the stream ends.
        yield engine_error_to_api(exc).body()


async def sse_events(chunks: AsyncGenerator[Chunk | ErrorResponse, None]) -> AsyncIterator[str]:
    """Each chunk as an event's data, then `[DONE]`. An error event ends the stream without it,
    except the shutdown's: that stream was ended on purpose, not broken, so it closes as usual.
    Closing the events closes `chunks` at once."""
    async with aclosing(chunks):
        async for chunk in chunks:
            yield sse_event(chunk)
            if isinstance(chunk, ErrorResponse):
                if chunk.error.code == SHUTDOWN_ERROR_CODE:
                    yield DONE_EVENT
                return
        yield DONE_EVENT
