"""GET /v1/models and GET /v1/models/{id}."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from ..errors import model_not_found
from ..serving_engine import ServingEngine
from . import server_state

router = APIRouter()


def _model_card(engine: ServingEngine, created: int) -> dict[str, Any]:
    config = engine.model_config
    return {
        "id": engine.model_name,
        "object": "model",
        "created": created,
        "owned_by": "ziggurat",
        "context_length": engine.max_model_len,
        "parameter_count": config.num_parameters(),
        "format": config.source_format,
        "architecture": config.architecture,
    }


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    state = server_state(request)
    engine = state.require_engine()
    return {"object": "list", "data": [_model_card(engine, int(state.started_at))]}


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request) -> dict[str, Any]:
    state = server_state(request)
    engine = state.require_engine()
    if model_id != engine.model_name:
        raise model_not_found(model_id, engine.model_name)
    return _model_card(engine, int(state.started_at))
