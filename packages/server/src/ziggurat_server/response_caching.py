"""One request's use of the response cache: whether it may use it, its key, serving a hit and
keeping a fresh response.

A response is served from the cache only where generating it again would give the same output:
greedy decoding (temperature 0) or an explicit `seed`. The key covers the model, the prompt's
token ids as the engine would run them, the whole SamplingParams and the whole request body but
for the fields listed in NOT_OUTPUT_FIELDS, so a field added to either later is part of the key
without anyone having to remember it. Only complete responses are kept: never an error, a
choice cut short by an abort, or a stream the client left early.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import AsyncGenerator, Sequence
from typing import TypeVar

from starlette.responses import Response
from ziggurat_core.engine.inputs import PromptInput
from ziggurat_core.engine.sampling_params import SamplingParams
from ziggurat_core.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    ErrorResponse,
    RequestModel,
)
from ziggurat_core.protocol.common import SamplingFields

from .response_cache import CachedResponse, ResponseCache
from .response_meta import ResponseMeta
from .serving_engine import ServingEngine
from .sse import SSEResponse
from .state import ServerState
from .streaming import Chunk as StreamChunk
from .streaming import sse_events
from .wire import ModelResponse

# Request fields that cannot change what is generated or how it is shaped. `model` is replaced
# by the served model's name; the others are bookkeeping.
NOT_OUTPUT_FIELDS = frozenset({"cache", "model", "user", "metadata", "store", "service_tier",
                               "safety_identifier", "prompt_cache_key"})

Body = TypeVar("Body", ChatCompletion, Completion)
Chunk = TypeVar("Chunk", ChatCompletionChunk, Completion)


def reproducible(params: SamplingParams) -> bool:
    return params.greedy or params.seed is not None


def cache_key(endpoint: str, model: str, prompt_token_ids: Sequence[list[int]],
              params: SamplingParams, body: RequestModel) -> str:
    """A digest of everything that shapes the response (see the module docstring)."""
    shaping = {
        "endpoint": endpoint,
        "model": model,
        "prompt_token_ids": list(prompt_token_ids),
        "sampling_params": dataclasses.asdict(params),
        "request": body.model_dump(mode="json", exclude=set(NOT_OUTPUT_FIELDS)),
    }
    # default=repr: a value JSON cannot hold still counts, by its repr.
    text = json.dumps(shaping, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def _cut_short(bodies: Sequence[ChatCompletion | ChatCompletionChunk | Completion]) -> bool:
    return any(choice.finish_reason == "abort" for body in bodies for choice in body.choices)


class RequestCaching:
    """`key` is None when the output is not reproducible: then the cache is neither read nor
    written, and the response says `cached: false`."""

    def __init__(self, cache: ResponseCache, key: str | None) -> None:
        self.cache = cache
        self.key = key

    @classmethod
    def of(cls, state: ServerState, engine: ServingEngine, endpoint: str, body: SamplingFields,
           prompts: Sequence[PromptInput], params: SamplingParams) -> RequestCaching | None:
        """The request's caching, or None when it did not ask for the cache (its `cache`, else
        the server's --response-cache)."""
        wanted = body.cache if body.cache is not None else state.settings.response_cache
        if not wanted:
            return None
        if not reproducible(params):
            state.metrics.response_cache.uncacheable.inc()
            return cls(state.response_cache, None)
        # The routes hand the engine token ids (rendered and tokenised in prompts.py).
        token_ids = [prompt["prompt_token_ids"] for prompt in prompts]
        return cls(state.response_cache, cache_key(endpoint, engine.model_name, token_ids, params,
                                                   body))

    # ------------------------------------------------------------------ a hit
    def serve_hit(self, stream: bool, meta: ResponseMeta, body_type: type[Body],
                  chunk_type: type[Chunk]) -> Response | None:
        """The cached response, under this request's id and time, or None on a miss."""
        hit = None if self.key is None else self.cache.get(self.key)
        if hit is None:
            return None
        if stream:
            return SSEResponse(sse_events(_replay_chunks(hit, chunk_type, meta)), on_close=_nothing)
        body = body_type.model_validate_json(hit.bodies[0])
        _renew(body, meta)
        body.cached = True
        return ModelResponse(body)

    # ------------------------------------------------------------------ a fresh response
    def keep_body(self, body: Body) -> Body:
        """Mark `body` as fresh and keep it when it may be served again."""
        body.cached = False
        if self.key is not None and not _cut_short([body]):
            self.cache.put(self.key, CachedResponse((body.wire_json(),)))
        return body

    async def recording(self, chunks: AsyncGenerator[StreamChunk | ErrorResponse, None],
                        ) -> AsyncGenerator[StreamChunk | ErrorResponse, None]:
        """`chunks`, passed on; kept once the stream has ended complete and without an error.
        A client that leaves early closes this generator before the end: nothing is kept."""
        sent: list[StreamChunk] = []
        try:
            async for chunk in chunks:
                yield chunk
                if isinstance(chunk, ErrorResponse):
                    return
                sent.append(chunk)
        finally:
            await chunks.aclose()
        if self.key is not None and sent and not _cut_short(sent):
            response = CachedResponse(tuple(chunk.wire_json() for chunk in sent))
            self.cache.put(self.key, response)


async def _replay_chunks(hit: CachedResponse, chunk_type: type[Chunk], meta: ResponseMeta,
                         ) -> AsyncGenerator[Chunk | ErrorResponse, None]:
    for position, data in enumerate(hit.bodies):
        chunk = chunk_type.model_validate_json(data)
        _renew(chunk, meta)
        if position == len(hit.bodies) - 1:
            chunk.cached = True
        yield chunk


def _renew(body: ChatCompletion | ChatCompletionChunk | Completion, meta: ResponseMeta) -> None:
    body.id = meta.id
    body.created = meta.created


async def _nothing() -> None:
    """A replayed stream has no engine request to abort when it closes."""
