"""GET /v1/info (server, model, memory, engine settings) and GET /v1/gpu/info (hardware)."""

from __future__ import annotations

import dataclasses
import time

from fastapi import APIRouter, Request
from ziggurat_core.engine.reports import DeviceInfo, EngineStats, ReplicaReport
from ziggurat_core.protocol import (
    AcceleratorDevice,
    EngineCounters,
    EngineInfo,
    GpuInfo,
    HostCpu,
    ReplicaStatus,
    ResolvedEngineSettings,
    ServerInfo,
    ServerMemory,
)

from .. import __version__
from ..openapi import errors, ok
from ..wire import ModelResponse
from . import server_state

router = APIRouter()


def _memory(device_info: DeviceInfo, engine_device: str, stats: EngineStats) -> ServerMemory:
    """Totals of the device the KV cache lives on: the first accelerator, else host memory."""
    if device_info.devices and engine_device.startswith("cuda"):
        total, free = device_info.devices[0].total_memory, device_info.devices[0].free_memory
    else:
        total, free = device_info.cpu.total_memory, device_info.cpu.available_memory
    return ServerMemory(
        device=engine_device,
        total_bytes=total,
        used_bytes=total - free,
        kv_cache_bytes=stats.kv_cache_bytes,
        kv_blocks_total=stats.kv_blocks_total,
        kv_blocks_used=stats.kv_blocks_used,
        kv_usage=stats.kv_usage,
    )


def _replica_status(report: ReplicaReport) -> ReplicaStatus:
    stats = report.stats
    return ReplicaStatus(
        id=report.id, node=report.node, pid=report.pid, state=report.state,
        outstanding=report.outstanding,
        running=stats.running if stats else None,
        waiting=stats.waiting if stats else None,
        kv_blocks_total=stats.kv_blocks_total if stats else None,
        kv_blocks_used=stats.kv_blocks_used if stats else None,
        kv_usage=stats.kv_usage if stats else None,
        prompt_tokens=stats.prompt_tokens if stats else None,
        generation_tokens=stats.generation_tokens if stats else None,
        tensor_parallel_size=report.tensor_parallel_size,
    )


@router.get("/v1/info", responses={**ok(ServerInfo), **errors(503)})
async def server_info(request: Request) -> ModelResponse:
    state = server_state(request)
    engine = state.require_engine()
    stats = engine.stats()
    resolved = engine.resolved_settings
    replicas = engine.replicas()
    return ModelResponse(ServerInfo(
        version=__version__,
        models=[engine.model_name],
        uptime_s=time.time() - state.started_at,
        memory=_memory(engine.device_info(), resolved.engine_device, stats),
        engine=EngineInfo(
            config=dataclasses.asdict(engine.engine_config),
            # What "auto" settings resolved to.
            resolved=ResolvedEngineSettings(**dataclasses.asdict(resolved)),
            max_model_len=engine.max_model_len,
            stats=EngineCounters(**dataclasses.asdict(stats)),
        ),
        server=state.settings.public_dict(),
        replicas=[_replica_status(report) for report in replicas] if replicas else None,
    ))


@router.get("/v1/gpu/info", responses={**ok(GpuInfo), **errors(503)})
async def gpu_info(request: Request) -> ModelResponse:
    info = server_state(request).require_engine().device_info()
    return ModelResponse(GpuInfo(
        devices=[AcceleratorDevice(**dataclasses.asdict(device)) for device in info.devices],
        cpu=HostCpu(**dataclasses.asdict(info.cpu)),
    ))
