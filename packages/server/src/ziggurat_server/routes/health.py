"""GET /health: open without an API key; 503 unless the model is loaded and the engine alive."""

from __future__ import annotations

from fastapi import APIRouter, Request
from ziggurat_core.engine.reports import DeviceInfo
from ziggurat_core.protocol import HealthStatus

from ..openapi import ok
from ..wire import ModelResponse
from . import server_state

router = APIRouter()


def _device_names(info: DeviceInfo) -> list[str]:
    names = [f"{device.name} (cuda:{device.id})" for device in info.devices]
    return names or [f"cpu ({info.cpu.name or 'unknown'})"]


@router.get("/health", responses={
    **ok(HealthStatus),
    503: {"model": HealthStatus, "description": "Loading, failed to load, or the engine stopped "
                                                "(`status` says which; `error` says why)."}})
async def health(request: Request) -> ModelResponse:
    state = server_state(request)
    status = state.status
    model = state.engine.model_name if state.engine is not None else state.settings.model
    device_info = state.device_info()
    devices = _device_names(device_info) if device_info is not None else None
    body = HealthStatus(status=status, model=model, devices=devices)
    if status == "error" and state.load_error is not None:
        body.error = state.load_error  # only then: the key is absent otherwise
    # Degraded still serves (on the replicas that are up): a load balancer keeps sending.
    return ModelResponse(body, status_code=200 if status in ("ok", "degraded") else 503)
