"""What the engine reports about itself: its counters and the hardware it runs on. No torch.

The server turns these into /metrics, /v1/info and /v1/gpu/info without knowing the engine's
insides.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the scheduler's queues, the KV cache and the engine's running totals."""

    running: int  # sequences being decoded
    waiting: int  # sequences waiting for a slot
    kv_blocks_total: int
    kv_blocks_used: int
    kv_usage: float  # fraction of KV blocks in use
    kv_waste: float  # fraction of the used blocks' slots holding no token
    kv_cache_bytes: int
    block_size: int
    prefix_cache_hit_rate: float
    peak_kv_usage: float
    peak_kv_waste: float  # the waste when usage peaked
    prompt_tokens: int
    generation_tokens: int
    steps: int
    preemptions: int
    uptime_s: float
    errored: bool = False  # the serving loop died (AsyncEngine); a stepping engine never is
    # The OpenMP threads the model runs with now (None on CUDA), fewer than configured while
    # other work on the host waits for a CPU (adaptive_threads.py), and how often it gave one
    # back.
    cpu_threads: int | None = None
    cpu_thread_yields: int = 0


@dataclass(frozen=True)
class AcceleratorInfo:
    id: int
    name: str
    total_memory: int  # bytes
    free_memory: int  # bytes
    compute_capability: str
    driver_version: str | None
    cuda_version: str | None


@dataclass(frozen=True)
class CpuInfo:
    name: str
    architecture: str
    cores: int | None
    torch_threads: int
    total_memory: int  # bytes
    available_memory: int  # bytes


@dataclass(frozen=True)
class DeviceInfo:
    """The host's accelerators (an honest empty list on a CPU-only host) and its CPU."""

    devices: list[AcceleratorInfo]
    cpu: CpuInfo


@dataclass(frozen=True)
class MemoryProfile:
    """How the KV cache was sized on CUDA (`memory_profile.py`): the engine's share of the
    device, what the weights, the largest step and the decode CUDA graphs take of it, and what
    the cache got."""

    total_bytes: int  # the device's memory
    gpu_memory_utilization: float  # the engine's fraction of total_bytes
    weights_bytes: int
    peak_activation_bytes: int  # the profiled step's peak above the weights
    non_torch_bytes: int  # memory outside torch's allocator (CUDA context, libraries)
    kv_cache_bytes: int
    num_kv_blocks: int
    # Set aside for the decode steps' CUDA graphs, as measured by a capture during profiling
    # (0 where no graphs are captured: enforce_eager, tensor parallelism).
    cuda_graph_bytes: int = 0
    # What the graphs took when captured over the real cache; None before that or without them.
    cuda_graph_measured_bytes: int | None = None
    # Kept free for what the engine comes to use after the profile (memory_profile.py).
    headroom_bytes: int = 0


@dataclass(frozen=True)
class ResolvedSettings:
    """What the engine's "auto" settings resolved to on this host."""

    engine_device: str  # "cpu", "cuda:0", ...
    dtype: str  # "float32", "bfloat16", ...
    attention_backend: str
    quantization: str  # "none" | "int8"
    kv_cache_dtype: str
    # The C kernel variant in use (cpu_kernels.ISAS); None on CUDA or without the kernels.
    cpu_isa: str | None
    # How the KV cache was sized by profiling; None where it was not (CPU, or a size given).
    memory_profile: MemoryProfile | None = None
    # The ranks one engine's model is split over (engine/distributed); 1 without splitting.
    tensor_parallel_size: int = 1


@dataclass(frozen=True)
class ReplicaReport:
    """One engine replica of a replica set (engine/replicas) as last seen."""

    id: int
    state: str  # "up" | "starting" | "restarting"
    node: str | None  # the Ray node it runs on
    pid: int | None
    stats: EngineStats | None  # None until it first reported
    outstanding: int  # requests routed to it and not finished
    tensor_parallel_size: int | None = None  # its engine's ranks; None until it first reported
