"""POST /v1/chat/completions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from ziggurat_core.protocol import ChatCompletionRequest

from ..chat_format import ChatChunker, chat_completion_body
from ..engine_client import EngineClient
from ..errors import bad_request
from ..generation import Generation, engine_error_to_api
from ..response_meta import ResponseMeta, usage_of
from ..sampling import chat_sampling_params, check_model_name
from ..sse import DONE_EVENT, SSEResponse, sse_event
from . import server_state

router = APIRouter()


def chat_prompt(engine: EngineClient, body: ChatCompletionRequest) -> dict[str, Any]:
    """Keyword arguments for engine.generate; the engine applies the model's chat template."""
    messages = [message.to_template_dict() for message in body.messages]
    if body.add_generation_prompt:
        return {"messages": messages, "tools": body.tools}
    # The engine always adds the assistant header; without it, render the template here.
    try:
        text = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=False,
                                                    tools=body.tools)
    except ValueError as exc:
        raise bad_request(f"chat template failed: {exc}", param="messages") from None
    return {"prompt_token_ids": engine.tokenizer.encode(text, add_special_tokens=False)}


@router.post("/v1/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    state = server_state(request)
    engine = state.require_engine()
    check_model_name(body.model, engine.model_name)
    params = chat_sampling_params(body, engine.model_config.vocab_size)
    include_usage = bool(body.stream and body.stream_options and body.stream_options.include_usage)
    meta = ResponseMeta("chatcmpl", engine.model_name, params.n, include_usage=include_usage)
    generation = Generation(state, engine, [chat_prompt(engine, body)], params, "chatcmpl")
    firsts = await generation.start(request.receive)
    token_bytes = getattr(engine.tokenizer, "token_bytes", None)
    if body.stream:
        chunker = ChatChunker(meta, token_bytes)
        return SSEResponse(_chat_events(generation, firsts, chunker), on_close=generation.close)
    try:
        finals = await generation.finals(firsts, request.receive)
    finally:
        await generation.close()
    return JSONResponse(chat_completion_body(meta, finals, token_bytes))


async def _chat_events(generation: Generation, firsts: list[Any],
                       chunker: ChatChunker) -> AsyncIterator[str]:
    meta = chunker.meta
    latest = list(firsts)
    try:
        for chunk in chunker.role_chunks(generation.num_sequences):
            yield sse_event(chunk)
        for prompt_index, output in enumerate(firsts):
            for chunk in chunker.output_chunks(prompt_index, output):
                yield sse_event(chunk)
        async for prompt_index, output in generation.rest():
            latest[prompt_index] = output
            for chunk in chunker.output_chunks(prompt_index, output):
                yield sse_event(chunk)
        if meta.include_usage:
            yield sse_event(chunker.usage_chunk(usage_of(latest)))
        yield DONE_EVENT
    except Exception as exc:
        # Headers are gone already: the error travels as an event, then the stream ends.
        yield sse_event(engine_error_to_api(exc).body())
