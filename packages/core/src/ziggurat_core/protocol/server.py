"""`/health`, `/v1/info` and `/v1/gpu/info`: what the server runs and on what."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ._base import ResponseModel


class HealthStatus(ResponseModel):
    status: Literal["ok", "degraded", "loading", "error"] | str
    model: str | None = None
    devices: list[str] | None = None  # "name (cuda:0)" or "cpu (name)"; None until loaded
    error: str | None = None  # why loading failed, with status "error"


class ServerMemory(ResponseModel):
    """The device the KV cache lives on: the first accelerator, else host memory."""

    device: str | None = None
    total_bytes: int | None = None
    used_bytes: int | None = None
    kv_cache_bytes: int | None = None
    kv_blocks_total: int | None = None
    kv_blocks_used: int | None = None
    kv_usage: float | None = None


class EngineMemoryProfile(ResponseModel):
    """How the KV cache was sized on CUDA: the engine's share (gpu_memory_utilization) of the
    device's memory, less the weights, the largest step's peak, memory outside torch, the
    decode steps' CUDA graphs and a headroom for what the engine comes to use later."""

    total_bytes: int | None = None
    gpu_memory_utilization: float | None = None
    weights_bytes: int | None = None
    peak_activation_bytes: int | None = None
    non_torch_bytes: int | None = None
    kv_cache_bytes: int | None = None
    num_kv_blocks: int | None = None
    cuda_graph_bytes: int | None = None  # set aside for the graphs, measured while profiling
    cuda_graph_measured_bytes: int | None = None  # what they took over the real cache
    headroom_bytes: int | None = None  # kept free for later growth (lazily loaded kernels)


class ResolvedEngineSettings(ResponseModel):
    """What the engine's "auto" settings resolved to on this machine."""

    engine_device: str | None = None
    dtype: str | None = None
    attention_backend: str | None = None
    quantization: str | None = None
    kv_cache_dtype: str | None = None
    cpu_isa: str | None = None  # the CPU kernel variant: avx512vnni, avx2, neon, scalar
    memory_profile: EngineMemoryProfile | None = None  # None where the cache was not profiled
    tensor_parallel_size: int | None = None  # ranks the model is split over (each replica's)


class EngineCounters(ResponseModel):
    """Live scheduler and KV-cache counters (every field optional: other servers differ)."""

    running: int | None = None  # sequences being decoded
    waiting: int | None = None  # sequences waiting for a slot
    kv_blocks_total: int | None = None
    kv_blocks_used: int | None = None
    kv_usage: float | None = None  # fraction of KV blocks in use
    kv_waste: float | None = None  # fraction of the used blocks' slots holding no token
    kv_cache_bytes: int | None = None
    block_size: int | None = None
    prefix_cache_hit_rate: float | None = None
    peak_kv_usage: float | None = None
    peak_kv_waste: float | None = None
    prompt_tokens: int | None = None
    generation_tokens: int | None = None
    steps: int | None = None
    preemptions: int | None = None
    uptime_s: float | None = None
    errored: bool | None = None  # the engine's serving loop died
    # CPU: the OpenMP threads the model runs with now (summed over replicas), one fewer while
    # other work on the host waits for a CPU (--adaptive-threads), and how often that happened.
    cpu_threads: int | None = None
    cpu_thread_yields: int | None = None


class EngineInfo(ResponseModel):
    config: dict[str, Any] = Field(default_factory=dict)  # the engine settings as given
    resolved: ResolvedEngineSettings = Field(default_factory=ResolvedEngineSettings)
    max_model_len: int | None = None
    stats: EngineCounters = Field(default_factory=EngineCounters)


class ReplicaStatus(ResponseModel):
    """One engine replica of a replica set (`--num-replicas`)."""

    id: int | None = None
    node: str | None = None  # the Ray node id
    pid: int | None = None
    state: Literal["up", "starting", "restarting"] | str | None = None
    outstanding: int | None = None  # requests the router sent it that have not finished
    running: int | None = None
    waiting: int | None = None
    kv_blocks_total: int | None = None
    kv_blocks_used: int | None = None
    kv_usage: float | None = None
    prompt_tokens: int | None = None  # totals since this replica's process started
    generation_tokens: int | None = None
    tensor_parallel_size: int | None = None  # ranks this replica's model is split over


class ServerInfo(ResponseModel):
    version: str | None = None
    models: list[str] = Field(default_factory=list)
    uptime_s: float | None = None
    memory: ServerMemory | None = None
    engine: EngineInfo | None = None
    server: dict[str, Any] | None = None  # the server's settings, API key masked
    replicas: list[ReplicaStatus] | None = None  # only with a replica set


class AcceleratorDevice(ResponseModel):
    id: int | None = None
    name: str | None = None
    total_memory: int | None = None  # bytes
    free_memory: int | None = None  # bytes
    compute_capability: str | None = None
    driver_version: str | None = None
    cuda_version: str | None = None


class HostCpu(ResponseModel):
    name: str | None = None
    architecture: str | None = None
    cores: int | None = None
    torch_threads: int | None = None
    total_memory: int | None = None  # bytes
    available_memory: int | None = None  # bytes


class GpuInfo(ResponseModel):
    """The host's hardware as the engine reports it; `devices` is empty without a GPU."""

    devices: list[AcceleratorDevice] = Field(default_factory=list)
    cpu: HostCpu | None = None
