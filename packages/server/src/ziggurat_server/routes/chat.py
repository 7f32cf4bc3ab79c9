"""POST /v1/chat/completions."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from ziggurat_core.engine.inputs import PromptInput
from ziggurat_core.protocol import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest
from ziggurat_core.tools import ToolPlan

from ..chat_format import ChatChunker, chat_completion_body
from ..frontend_pool import FrontendPool
from ..generation import Generation
from ..openapi import errors, ok
from ..prompts import encode_chat
from ..response_caching import RequestCaching
from ..response_meta import ResponseMeta
from ..sampling import chat_sampling_params, check_model_name
from ..serving_engine import ServingEngine
from ..sse import SSEResponse
from ..streaming import sse_events, stream_chunks
from ..tool_calls import constrain_to_tool_calls, tool_plan
from ..unsupported_fields import reject_unimplemented_fields
from ..wire import ModelResponse
from . import server_state

router = APIRouter()


async def chat_prompt(pool: FrontendPool, engine: ServingEngine, body: ChatCompletionRequest,
                      plan: ToolPlan) -> PromptInput:
    """The conversation rendered and tokenised off the event loop (see prompts.py), with the
    tools the plan puts in the prompt."""
    messages = [message.to_template_dict() for message in body.messages]
    token_ids = await encode_chat(pool, engine, messages, body, tools=plan.prompt_tools())
    return {"prompt_token_ids": token_ids}


@router.post("/v1/chat/completions", responses={
    **ok(ChatCompletion, streamed=ChatCompletionChunk), **errors(400, 404, 413, 429, 503)})
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    reject_unimplemented_fields(body)
    state = server_state(request)
    engine = state.require_engine()
    check_model_name(body.model, engine.model_name)
    plan = tool_plan(body)
    params = chat_sampling_params(body)
    constrain_to_tool_calls(params, plan)
    include_usage = bool(body.stream and body.stream_options and body.stream_options.include_usage)
    meta = ResponseMeta("chatcmpl", engine.model_name, params.n, include_usage=include_usage)
    prompts = [await chat_prompt(state.frontend, engine, body, plan)]
    caching = RequestCaching.of(state, engine, "chat", body, prompts, params)
    if caching is not None and (hit := caching.serve_hit(
            body.stream, meta, ChatCompletion, ChatCompletionChunk)) is not None:
        return hit
    generation = Generation(state, engine, prompts, params, "chatcmpl")
    firsts = await generation.start(request.receive)
    if body.stream:
        chunker = ChatChunker(meta, plan)
        chunks = stream_chunks(generation, firsts, chunker, meta.include_usage,
                               head=chunker.role_chunks(generation.num_sequences),
                               cached=None if caching is None else False)
        if caching is not None:
            chunks = caching.recording(chunks)
        return SSEResponse(sse_events(chunks), on_close=generation.close)
    try:
        finals = await generation.finals(firsts, request.receive)
    finally:
        await generation.close()
    response = chat_completion_body(meta, finals, plan)
    return ModelResponse(response if caching is None else caching.keep_body(response))
