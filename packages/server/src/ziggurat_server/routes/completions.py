"""POST /v1/completions (legacy text completions)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from ziggurat_core.engine.inputs import PromptInput
from ziggurat_core.engine.outputs import RequestOutput
from ziggurat_core.protocol import Completion, CompletionRequest

from ..completion_format import CompletionChunker, completion_body
from ..errors import bad_request
from ..generation import Generation
from ..response_caching import RequestCaching
from ..response_meta import ResponseMeta
from ..sampling import check_model_name, completion_sampling_params
from ..serving_engine import ServingEngine
from ..sse import SSEResponse
from ..streaming import sse_events, stream_chunks
from ..wire import ModelResponse
from . import server_state

router = APIRouter()


def _engine_prompt(prompt: str | list[int]) -> PromptInput:
    return {"prompt": prompt} if isinstance(prompt, str) else {"prompt_token_ids": prompt}


def _prompt_text(engine: ServingEngine, output: RequestOutput) -> str:
    if output.prompt is not None:
        return output.prompt
    return engine.decode(output.prompt_token_ids)


@router.post("/v1/completions")
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    state = server_state(request)
    engine = state.require_engine()
    check_model_name(body.model, engine.model_name)
    params = completion_sampling_params(body)
    if body.echo and body.logprobs is not None:
        raise bad_request("echo together with logprobs is not supported (the engine does not "
                          "compute prompt logprobs)", param="echo")
    include_usage = bool(body.stream and body.stream_options and body.stream_options.include_usage)
    meta = ResponseMeta("cmpl", engine.model_name, params.n, include_usage=include_usage)
    prompts = [_engine_prompt(prompt) for prompt in body.prompts()]
    caching = RequestCaching.of(state, engine, "completions", body, prompts, params)
    if caching is not None and (hit := caching.serve_hit(
            body.stream, meta, Completion, Completion)) is not None:
        return hit
    generation = Generation(state, engine, prompts, params, "cmpl")
    firsts = await generation.start(request.receive)
    if body.stream:
        chunker = CompletionChunker(meta)
        opening = None
        if body.echo:
            def opening(index: int, output: RequestOutput) -> list[Completion]:
                return chunker.echo_chunks(index, _prompt_text(engine, output))
        chunks = stream_chunks(generation, firsts, chunker, meta.include_usage,
                               prompt_opening=opening, cached=None if caching is None else False)
        if caching is not None:
            chunks = caching.recording(chunks)
        return SSEResponse(sse_events(chunks), on_close=generation.close)
    try:
        finals = await generation.finals(firsts, request.receive)
    finally:
        await generation.close()
    echo_texts = [_prompt_text(engine, output) for output in finals] if body.echo else None
    response = completion_body(meta, finals, echo_texts)
    return ModelResponse(response if caching is None else caching.keep_body(response))
