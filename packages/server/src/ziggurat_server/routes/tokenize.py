"""POST /tokenize and POST /detokenize with the served model's tokenizer."""

from __future__ import annotations

from fastapi import APIRouter, Request
from ziggurat_core.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)

from ..errors import bad_request
from ..openapi import errors, ok
from ..prompts import decode_tokens, encode_chat, encode_text
from ..sampling import check_model_name
from ..unsupported_fields import reject_unimplemented_fields
from ..wire import ModelResponse
from . import server_state

router = APIRouter()


@router.post("/tokenize", responses={**ok(TokenizeResponse), **errors(400, 404, 413, 503)})
async def tokenize(body: TokenizeRequest, request: Request) -> ModelResponse:
    reject_unimplemented_fields(body)
    state = server_state(request)
    engine = state.require_engine()
    check_model_name(body.model, engine.model_name)
    if body.messages is not None:
        messages = [message.to_template_dict() for message in body.messages]
        tokens = await encode_chat(state.frontend, engine, messages, body,
                                   add_special_tokens=body.special_tokens_added())
    else:
        assert body.prompt is not None
        tokens = await encode_text(state.frontend, engine, body.prompt,
                                   add_special_tokens=body.special_tokens_added())
    return ModelResponse(TokenizeResponse(tokens=list(tokens), count=len(tokens),
                                          max_model_len=engine.max_model_len))


@router.post("/detokenize", responses={**ok(DetokenizeResponse),
                                          **errors(400, 404, 413, 503)})
async def detokenize(body: DetokenizeRequest, request: Request) -> ModelResponse:
    reject_unimplemented_fields(body)
    state = server_state(request)
    engine = state.require_engine()
    check_model_name(body.model, engine.model_name)
    vocab_size = engine.model_config.vocab_size
    bad = next((token for token in body.tokens if not 0 <= token < vocab_size), None)
    if bad is not None:
        raise bad_request(f"token id {bad} is outside the vocabulary [0, {vocab_size})",
                          param="tokens")
    return ModelResponse(DetokenizeResponse(prompt=await decode_tokens(state.frontend, engine, body.tokens)))
