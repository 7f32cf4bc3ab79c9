"""GET /metrics in the Prometheus text format."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..metrics import CONTENT_TYPE
from . import server_state

router = APIRouter()


@router.get("/metrics", response_class=Response, responses={
    200: {"description": "Prometheus text format", "content": {CONTENT_TYPE: {"schema": {"type": "string"}}}}})
async def metrics(request: Request) -> Response:
    state = server_state(request)
    stats = state.engine.stats() if state.status == "ok" and state.engine is not None else None
    return Response(state.metrics.render(stats), media_type=CONTENT_TYPE)
