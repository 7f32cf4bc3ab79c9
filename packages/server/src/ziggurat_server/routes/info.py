"""GET /v1/info (server, model, memory, engine settings) and GET /v1/gpu/info (hardware)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from fastapi import APIRouter, Request

from .. import __version__
from . import server_state

router = APIRouter()


def _memory(device_info: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
    """Totals of the device the KV cache lives on: the first accelerator, else host memory."""
    devices = device_info.get("devices") or []
    if devices and str(device_info.get("engine_device", "cuda")).startswith("cuda"):
        total, free = devices[0].get("total_memory"), devices[0].get("free_memory")
    else:
        cpu = device_info.get("cpu", {})
        total, free = cpu.get("total_memory"), cpu.get("available_memory")
    used = total - free if total is not None and free is not None else None
    return {
        "device": device_info.get("engine_device"),
        "total_bytes": total,
        "used_bytes": used,
        "kv_cache_bytes": stats.get("kv_cache_bytes"),
        "kv_blocks_total": stats.get("kv_blocks_total"),
        "kv_blocks_used": stats.get("kv_blocks_used"),
        "kv_usage": stats.get("kv_usage"),
    }


_RESOLVED = (
    "engine_device", "dtype", "attention_backend", "quantization", "kv_cache_dtype", "cpu_isa",
)


@router.get("/v1/info")
async def server_info(request: Request) -> dict[str, Any]:
    state = server_state(request)
    engine = state.require_engine()
    stats = engine.stats()
    device_info = state.device_info(fresh=True)
    return {
        "version": __version__,
        "models": [engine.model_name],
        "uptime_s": time.time() - state.started_at,
        "memory": _memory(device_info, stats),
        "engine": {
            "config": dataclasses.asdict(engine.engine_config),
            # What "auto" settings resolved to.
            "resolved": {key: device_info.get(key) for key in _RESOLVED},
            "max_model_len": engine.max_model_len,
            "stats": stats,
        },
        "server": state.settings.public_dict(),
    }


@router.get("/v1/gpu/info")
async def gpu_info(request: Request) -> dict[str, Any]:
    state = server_state(request)
    state.require_engine()
    info = state.device_info(fresh=True)
    return {"devices": info.get("devices", []), "cpu": info.get("cpu")}
