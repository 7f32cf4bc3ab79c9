"""POST /v1/completions (legacy text completions)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from ziggurat_core.engine.inputs import PromptInput
from ziggurat_core.engine.outputs import RequestOutput
from ziggurat_core.protocol import Completion, CompletionRequest

from ..completion_format import CompletionChunker, completion_body
from ..errors import bad_request
from ..frontend_pool import FrontendPool
from ..generation import Generation
from ..openapi import errors, ok
from ..prompts import decode_tokens, encode_text
from ..response_caching import RequestCaching
from ..response_meta import ResponseMeta
from ..sampling import check_model_name, completion_sampling_params
from ..serving_engine import ServingEngine
from ..sse import SSEResponse
from ..streaming import sse_events, stream_chunks
from ..unsupported_fields import reject_unimplemented_fields
from ..wire import ModelResponse
from . import server_state

router = APIRouter()


async def _engine_prompt(pool: FrontendPool, engine: ServingEngine, prompt: str | list[int],
                         ) -> PromptInput:
    """Text is tokenised off the event loop (see prompts.py); token ids go as they are."""
    if isinstance(prompt, str):
        return {"prompt_token_ids": await encode_text(pool, engine, prompt)}
    return {"prompt_token_ids": prompt}


async def _echo_text(pool: FrontendPool, engine: ServingEngine, prompt: str | list[int]) -> str:
    """The prompt as the client wrote it; token ids as the tokenizer reads them."""
    return prompt if isinstance(prompt, str) else await decode_tokens(pool, engine, prompt)


@router.post("/v1/completions", responses={
    **ok(Completion, streamed=Completion), **errors(400, 404, 413, 429, 503)})
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    reject_unimplemented_fields(body)
    state = server_state(request)
    engine = state.require_engine()
    check_model_name(body.model, engine.model_name)
    params = completion_sampling_params(body)
    if body.echo and body.logprobs is not None:
        raise bad_request("echo together with logprobs is not supported (the engine does not "
                          "compute prompt logprobs)", param="echo")
    include_usage = bool(body.stream and body.stream_options and body.stream_options.include_usage)
    meta = ResponseMeta("cmpl", engine.model_name, params.n, include_usage=include_usage)
    given = body.prompts()
    prompts = [await _engine_prompt(state.frontend, engine, prompt) for prompt in given]
    echo_texts = ([await _echo_text(state.frontend, engine, prompt) for prompt in given]
                  if body.echo else None)
    caching = RequestCaching.of(state, engine, "completions", body, prompts, params)
    if caching is not None and (hit := caching.serve_hit(
            body.stream, meta, Completion, Completion)) is not None:
        return hit
    generation = Generation(state, engine, prompts, params, "cmpl")
    firsts = await generation.start(request.receive)
    if body.stream:
        chunker = CompletionChunker(meta)
        opening = None
        if echo_texts is not None:
            def opening(index: int, output: RequestOutput) -> list[Completion]:
                return chunker.echo_chunks(index, echo_texts[index])
        chunks = stream_chunks(generation, firsts, chunker, meta.include_usage,
                               prompt_opening=opening, cached=None if caching is None else False)
        if caching is not None:
            chunks = caching.recording(chunks)
        return SSEResponse(sse_events(chunks), on_close=generation.close)
    try:
        finals = await generation.finals(firsts, request.receive)
    finally:
        await generation.close()
    response = completion_body(meta, finals, echo_texts)
    return ModelResponse(response if caching is None else caching.keep_body(response))
