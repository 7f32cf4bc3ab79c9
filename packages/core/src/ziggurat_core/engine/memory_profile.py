"""How much device memory the KV cache gets on CUDA, from a profiled step. No torch.

vLLM's rule and meaning: `gpu_memory_utilization` is the fraction of the device's *total*
memory the whole engine may use (weights, the activations of the largest step, memory outside
torch's allocator such as the CUDA context, the decode steps' CUDA graphs, and the KV cache).
The cache gets what is left of that share once the rest is measured. The measuring (a dummy
step at `max_num_batched_tokens`, and a capture of the decode graphs, both over a small
temporary cache) is in `memory_profiler.py`; this file is only the arithmetic, so it is tested
with the measured numbers injected.

The graphs are captured for good only after the cache exists (they hold its address), so
their memory cannot be measured then and subtracted: it would already be spoken for. The
profiling capture measures it first (vLLM also reports a profiled CUDA-graph figure
before it sizes its cache), and the cache is sized without it.
"""

from __future__ import annotations

from .reports import MemoryProfile

# Device memory the engine comes to use after the profile, which no profiled step shows: the
# driver loads a kernel's code on its first launch (CUDA's lazy module loading), so the
# sampler's and the larger batches' kernels arrive later, with cuBLAS workspaces for new
# shapes. On the first GPU (an H200, `docs/benchmarks.md`) a tiny model's engine grew past its
# share by that means within its first steps; this is kept back from the cache for it.
RUNTIME_HEADROOM_BYTES = 256 * 2**20
# torch's caching allocator rounds a large allocation up to a multiple of 2 MiB: each KV cache
# tensor (one per layer) may take up to that much more than its blocks.
ALLOCATION_ROUNDING_BYTES = 2 * 2**20


def runtime_headroom_bytes(num_cache_tensors: int) -> int:
    """What the cache leaves free for growth after the profile and for its tensors' rounding."""
    return RUNTIME_HEADROOM_BYTES + num_cache_tensors * ALLOCATION_ROUNDING_BYTES


class InsufficientMemoryError(ValueError):
    """The engine's share of device memory does not hold the model, its largest step and one
    KV block."""


def validate_gpu_memory_utilization(value: float) -> None:
    if not 0.0 < value <= 1.0:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {value}")


def profile_kv_cache_memory(
    *,
    total_bytes: int,
    weights_bytes: int,
    peak_activation_bytes: int,
    non_torch_bytes: int,
    gpu_memory_utilization: float,
    bytes_per_block: int,
    cuda_graph_bytes: int = 0,
    headroom_bytes: int = 0,
) -> MemoryProfile:
    """The KV cache's share of `gpu_memory_utilization * total_bytes` after the weights, the
    largest step's activations (its peak above the weights), the memory torch does not
    allocate, the decode CUDA graphs' (0 without them) and `headroom_bytes` (what the engine
    comes to use later, `runtime_headroom_bytes`); raises InsufficientMemoryError where that
    leaves less than one block."""
    validate_gpu_memory_utilization(gpu_memory_utilization)
    for name, value in (
        ("total_bytes", total_bytes),
        ("weights_bytes", weights_bytes),
        ("peak_activation_bytes", peak_activation_bytes),
        ("non_torch_bytes", non_torch_bytes),
        ("cuda_graph_bytes", cuda_graph_bytes),
        ("headroom_bytes", headroom_bytes),
    ):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if bytes_per_block < 1:
        raise ValueError(f"bytes_per_block must be >= 1, got {bytes_per_block}")
    engine_bytes = int(total_bytes * gpu_memory_utilization)
    kv_cache_bytes = (
        engine_bytes - weights_bytes - peak_activation_bytes - non_torch_bytes - cuda_graph_bytes
        - headroom_bytes
    )
    if kv_cache_bytes < bytes_per_block:
        raise InsufficientMemoryError(
            f"gpu_memory_utilization={gpu_memory_utilization} gives the engine {engine_bytes} of "
            f"{total_bytes} bytes; weights ({weights_bytes}), the largest step's activations "
            f"({peak_activation_bytes}), memory outside torch ({non_torch_bytes}), the decode "
            f"CUDA graphs ({cuda_graph_bytes}) and the headroom for later growth "
            f"({headroom_bytes}) leave "
            f"{max(kv_cache_bytes, 0)} bytes, less than one KV block of {bytes_per_block}: raise "
            "gpu_memory_utilization or lower max_num_batched_tokens (or max_num_seqs, or "
            "enforce_eager for no graphs)"
        )
    num_blocks = kv_cache_bytes // bytes_per_block
    return MemoryProfile(
        total_bytes=total_bytes,
        gpu_memory_utilization=gpu_memory_utilization,
        weights_bytes=weights_bytes,
        peak_activation_bytes=peak_activation_bytes,
        non_torch_bytes=non_torch_bytes,
        kv_cache_bytes=num_blocks * bytes_per_block,
        num_kv_blocks=num_blocks,
        cuda_graph_bytes=cuda_graph_bytes,
        headroom_bytes=headroom_bytes,
    )


def graph_overrun_bytes(profile: MemoryProfile) -> int:
    """By how much the graphs captured over the real cache took more than was set aside for
    them (0 where they took no more, or were not measured): the engine's footprint exceeds
    its share by that much."""
    if profile.cuda_graph_measured_bytes is None:
        return 0
    return max(0, profile.cuda_graph_measured_bytes - profile.cuda_graph_bytes)
