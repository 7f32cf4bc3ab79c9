"""The engine's typed reports and the wire models the server turns them into name the same
fields: a field added on one side only would fail the server's model construction (engine side)
or never be filled (protocol side). Accelerators never appear on this GPU-less host's real
bodies, so this is where their model is held to the engine's."""

from __future__ import annotations

import dataclasses

import pytest
from pydantic import BaseModel
from ziggurat_core.engine.reports import (
    AcceleratorInfo,
    CpuInfo,
    EngineStats,
    MemoryProfile,
    ResolvedSettings,
)
from ziggurat_core.protocol import (
    AcceleratorDevice,
    EngineCounters,
    EngineMemoryProfile,
    HostCpu,
    ResolvedEngineSettings,
)


@pytest.mark.parametrize(
    ("report", "wire"),
    [
        (EngineStats, EngineCounters),
        (AcceleratorInfo, AcceleratorDevice),
        (CpuInfo, HostCpu),
        (ResolvedSettings, ResolvedEngineSettings),
        (MemoryProfile, EngineMemoryProfile),
    ],
)
def test_wire_model_has_exactly_the_report_fields(report: type, wire: type[BaseModel]) -> None:
    assert [f.name for f in dataclasses.fields(report)] == list(wire.model_fields)


def test_an_accelerator_report_round_trips_through_its_wire_model() -> None:
    device = AcceleratorInfo(id=0, name="NVIDIA H200", total_memory=141 << 30,
                             free_memory=100 << 30, compute_capability="9.0",
                             driver_version="570.1", cuda_version="12.8")
    body = AcceleratorDevice(**dataclasses.asdict(device)).wire_json()
    assert AcceleratorDevice.model_validate_json(body, strict=True).model_dump() == (
        dataclasses.asdict(device)
    )


def test_a_cuda_memory_profile_round_trips_through_the_resolved_settings() -> None:
    """The /v1/info route builds ResolvedEngineSettings from the report as here; only a CUDA
    run has a profile, so a CPU server's real body never shows one."""
    profile = MemoryProfile(total_bytes=141 << 30, gpu_memory_utilization=0.9,
                            weights_bytes=16 << 30, peak_activation_bytes=3 << 30,
                            non_torch_bytes=1 << 29, kv_cache_bytes=100 << 30,
                            num_kv_blocks=51200)
    resolved = ResolvedSettings(engine_device="cuda:0", dtype="bfloat16",
                                attention_backend="xformers", quantization="none",
                                kv_cache_dtype="bfloat16", cpu_isa=None, memory_profile=profile)
    body = ResolvedEngineSettings(**dataclasses.asdict(resolved)).wire_json()
    parsed = ResolvedEngineSettings.model_validate_json(body, strict=True)
    assert parsed.memory_profile is not None
    assert parsed.memory_profile.model_dump() == dataclasses.asdict(profile)
