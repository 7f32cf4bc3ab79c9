"""GET /metrics in the Prometheus text format."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from . import server_state

router = APIRouter()

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@router.get("/metrics")
async def metrics(request: Request) -> PlainTextResponse:
    state = server_state(request)
    stats = state.engine.stats() if state.status == "ok" and state.engine is not None else None
    return PlainTextResponse(state.metrics.render(stats), media_type=PROMETHEUS_CONTENT_TYPE)
