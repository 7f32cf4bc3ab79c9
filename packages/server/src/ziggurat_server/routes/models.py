"""GET /v1/models and GET /v1/models/{id}."""

from __future__ import annotations

from fastapi import APIRouter, Request
from ziggurat_core.protocol import Model, ModelList

from ..openapi import errors, ok
from ..sampling import check_model_name
from ..serving_engine import ServingEngine
from ..wire import ModelResponse
from . import server_state

router = APIRouter()


def _model_card(engine: ServingEngine, created: int) -> Model:
    config = engine.model_config
    return Model(
        id=engine.model_name,
        object="model",
        created=created,
        owned_by="ziggurat",
        context_length=engine.max_model_len,
        parameter_count=config.num_parameters(),
        format=config.source_format,
        architecture=config.architecture,
    )


@router.get("/v1/models", responses={**ok(ModelList), **errors(503)})
async def list_models(request: Request) -> ModelResponse:
    state = server_state(request)
    engine = state.require_engine()
    return ModelResponse(ModelList(object="list", data=[_model_card(engine, int(state.started_at))]))


@router.get("/v1/models/{model_id:path}", responses={**ok(Model), **errors(404, 503)})
async def retrieve_model(model_id: str, request: Request) -> ModelResponse:
    state = server_state(request)
    engine = state.require_engine()
    # The names generation accepts ("default" too) answer here with the served model's card.
    check_model_name(model_id, engine.model_name)
    return ModelResponse(_model_card(engine, int(state.started_at)))
