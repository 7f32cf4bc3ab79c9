"""KV cache sizing on CUDA: the arithmetic with measured numbers injected, the shape of the
profiled step, and the dummy step itself run on CPU."""

from __future__ import annotations

import dataclasses
import math
import weakref

import pytest
import torch
from fixtures_models import TinyModel
from ziggurat_core.engine.attention.torch_backend import PortableAttentionBackend
from ziggurat_core.engine.config import EngineConfig, ModelConfig
from ziggurat_core.engine.kv_cache_plan import plan_kv_cache
from ziggurat_core.engine.loader import load_checkpoint
from ziggurat_core.engine.memory_profile import (
    ALLOCATION_ROUNDING_BYTES,
    RUNTIME_HEADROOM_BYTES,
    InsufficientMemoryError,
    graph_overrun_bytes,
    profile_kv_cache_memory,
    runtime_headroom_bytes,
)
from ziggurat_core.engine.memory_profiler import (
    measure_graph_memory,
    profile_cuda_memory,
    profile_query_lens,
    run_profile_step,
)
from ziggurat_core.engine.models import build_model
from ziggurat_core.engine.reports import MemoryProfile

GIB = 2**30
MIB = 2**20


def test_the_cache_gets_the_engine_share_less_weights_activations_and_outside_memory() -> None:
    profile = profile_kv_cache_memory(
        total_bytes=80 * GIB,
        weights_bytes=16 * GIB,
        peak_activation_bytes=4 * GIB,
        non_torch_bytes=1 * GIB,
        gpu_memory_utilization=0.9,
        bytes_per_block=2 * MIB,
    )
    # 0.9 x 80 = 72 GiB for the engine; 72 - 16 - 4 - 1 = 51 GiB = 26112 blocks of 2 MiB.
    assert profile.num_kv_blocks == 26112
    assert profile.kv_cache_bytes == 51 * GIB
    assert (profile.total_bytes, profile.gpu_memory_utilization) == (80 * GIB, 0.9)
    assert (profile.weights_bytes, profile.peak_activation_bytes, profile.non_torch_bytes) == (
        16 * GIB, 4 * GIB, 1 * GIB,
    )


def test_the_cache_is_whole_blocks_within_the_share() -> None:
    profile = profile_kv_cache_memory(
        total_bytes=1000, weights_bytes=100, peak_activation_bytes=50, non_torch_bytes=0,
        gpu_memory_utilization=0.5, bytes_per_block=60,
    )
    # 500 - 150 = 350 bytes: 5 blocks of 60 (300 bytes); the 50 left over stay unused.
    assert (profile.num_kv_blocks, profile.kv_cache_bytes) == (5, 300)


def test_a_share_without_room_for_one_block_is_a_clear_error() -> None:
    with pytest.raises(InsufficientMemoryError, match="gpu_memory_utilization"):
        profile_kv_cache_memory(
            total_bytes=24 * GIB, weights_bytes=16 * GIB, peak_activation_bytes=4 * GIB,
            non_torch_bytes=1 * GIB, gpu_memory_utilization=0.5, bytes_per_block=2 * MIB,
        )


@pytest.mark.parametrize("utilization", [0.0, -0.1, 1.01])
def test_utilization_outside_0_1_is_refused(utilization: float) -> None:
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        profile_kv_cache_memory(
            total_bytes=GIB, weights_bytes=0, peak_activation_bytes=0, non_torch_bytes=0,
            gpu_memory_utilization=utilization, bytes_per_block=1,
        )
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        EngineConfig(gpu_memory_utilization=utilization).validate()


def test_a_negative_measurement_is_refused() -> None:
    with pytest.raises(ValueError, match="peak_activation_bytes"):
        profile_kv_cache_memory(
            total_bytes=GIB, weights_bytes=0, peak_activation_bytes=-1, non_torch_bytes=0,
            gpu_memory_utilization=0.9, bytes_per_block=1,
        )


@pytest.mark.parametrize(
    ("budget", "seqs", "model_len", "expected"),
    [
        (2048, 64, 4096, [32] * 64),  # the default: every seat prefilling 32 tokens
        (100, 64, 4096, [2] * 36 + [1] * 28),  # 100 = 64 + 36: the first 36 take one more
        (2048, 2, 100, [100, 100]),  # capped by the seats' context windows
        (5, 64, 10, [1] * 5),  # fewer tokens than seats
        (7, 1, 4096, [7]),
    ],
)
def test_the_profiled_step_is_the_largest_the_scheduler_can_run(
    budget: int, seqs: int, model_len: int, expected: list[int]
) -> None:
    lens = profile_query_lens(budget, seqs, model_len)
    assert lens == expected
    assert sum(lens) == min(budget, seqs * model_len)
    assert len(lens) <= seqs and max(lens) <= model_len


def test_the_dummy_step_runs_on_cpu_and_yields_one_distribution_per_prompt(
    tiny_llama: TinyModel,
) -> None:
    checkpoint = load_checkpoint(tiny_llama.gguf_path)
    model = build_model(checkpoint, "cpu", torch.float32)
    config = checkpoint.model_config
    query_lens = profile_query_lens(40, 3, config.max_position_embeddings)
    block_size = 16
    num_blocks = sum(math.ceil(n / block_size) for n in query_lens)
    shape = (2, num_blocks, block_size, config.num_key_value_heads, config.head_dim)
    caches = [torch.zeros(shape) for _ in range(config.num_hidden_layers)]

    with torch.inference_mode():
        probs = run_profile_step(
            model, PortableAttentionBackend(), caches, query_lens, block_size, torch.device("cpu")
        )

    assert probs.shape == (3, config.vocab_size)
    assert torch.allclose(probs.sum(-1), torch.ones(3))
    # Every prompt's keys went into its own blocks: all of them were written.
    assert all(bool(cache[0, block].abs().sum() > 0) for cache in caches for block in range(num_blocks))


SMALL = ModelConfig(
    architecture="llama", vocab_size=100, hidden_size=64, intermediate_size=96,
    num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
)


def test_plan_kv_cache_takes_the_profiled_blocks_unless_a_size_is_given() -> None:
    per_block = 2 * 3 * 16 * 2 * 16 * 2  # K and V, 3 layers, 16 slots, 2 heads x 16, bfloat16
    profile = MemoryProfile(
        total_bytes=GIB, gpu_memory_utilization=0.9, weights_bytes=0, peak_activation_bytes=0,
        non_torch_bytes=0, kv_cache_bytes=40 * per_block, num_kv_blocks=40,
    )
    cpu = torch.device("cpu")
    spec = plan_kv_cache(EngineConfig(block_size=16), SMALL, cpu, torch.bfloat16, 256, profile)
    assert (spec.num_blocks, spec.bytes_per_block) == (40, per_block)
    explicit = plan_kv_cache(EngineConfig(block_size=16, num_kv_blocks=7), SMALL, cpu, torch.bfloat16, 256, profile)
    assert explicit.num_blocks == 7
    sized = plan_kv_cache(
        EngineConfig(block_size=16, kv_cache_memory="1MiB"), SMALL, cpu, torch.bfloat16, 256, profile
    )
    assert sized.num_blocks == MIB // per_block
    # Static decode's padding block comes out of a byte budget, never out of an explicit count.
    padded = plan_kv_cache(EngineConfig(block_size=16), SMALL, cpu, torch.bfloat16, 256, profile, reserved_blocks=1)
    assert padded.num_blocks == 39
    assert plan_kv_cache(
        EngineConfig(block_size=16, num_kv_blocks=7), SMALL, cpu, torch.bfloat16, 256, profile, reserved_blocks=1
    ).num_blocks == 7


# --- the decode CUDA graphs' memory -----------------------------------------------------------


def test_the_decode_graphs_memory_comes_out_of_the_cache_share() -> None:
    profile = profile_kv_cache_memory(
        total_bytes=80 * GIB, weights_bytes=16 * GIB, peak_activation_bytes=4 * GIB,
        non_torch_bytes=1 * GIB, gpu_memory_utilization=0.9, bytes_per_block=2 * MIB,
        cuda_graph_bytes=GIB // 2,
    )
    # 72 - 16 - 4 - 1 - 0.5 = 50.5 GiB = 25856 blocks of 2 MiB.
    assert profile.num_kv_blocks == 25856
    assert profile.kv_cache_bytes == 50 * GIB + GIB // 2
    assert profile.cuda_graph_bytes == GIB // 2
    assert profile.cuda_graph_measured_bytes is None
    # Weights + activations + outside torch + graphs + cache stay within the engine's share.
    parts = 16 * GIB + 4 * GIB + 1 * GIB + GIB // 2 + profile.kv_cache_bytes
    assert parts <= int(0.9 * 80 * GIB)
    with pytest.raises(InsufficientMemoryError, match="CUDA graphs"):
        profile_kv_cache_memory(
            total_bytes=24 * GIB, weights_bytes=16 * GIB, peak_activation_bytes=3 * GIB,
            non_torch_bytes=0, gpu_memory_utilization=0.9, bytes_per_block=2 * MIB,
            cuda_graph_bytes=3 * GIB,
        )
    with pytest.raises(ValueError, match="cuda_graph_bytes"):
        profile_kv_cache_memory(
            total_bytes=GIB, weights_bytes=0, peak_activation_bytes=0, non_torch_bytes=0,
            gpu_memory_utilization=0.9, bytes_per_block=1, cuda_graph_bytes=-1,
        )


def test_graphs_that_took_more_than_was_set_aside_are_the_overrun() -> None:
    profile = profile_kv_cache_memory(
        total_bytes=GIB, weights_bytes=0, peak_activation_bytes=0, non_torch_bytes=0,
        gpu_memory_utilization=0.5, bytes_per_block=MIB, cuda_graph_bytes=100 * MIB,
    )
    assert graph_overrun_bytes(profile) == 0  # not measured yet
    assert graph_overrun_bytes(dataclasses.replace(profile, cuda_graph_measured_bytes=90 * MIB)) == 0
    assert graph_overrun_bytes(dataclasses.replace(profile, cuda_graph_measured_bytes=130 * MIB)) == 30 * MIB


class ScriptedMemory:
    """A device whose readings the test sets: torch holds `reserved`, the driver `outside`,
    the step peaks `step_peak` above `allocated` (reserving `step_reserve` more) and leaves
    `cached` reserved but unused; capturing takes `graph_pool` while the graphs live. Like
    `torch.cuda.graph`, a capture empties the cache as it begins (`capture_begins`)."""

    def __init__(self, total: int, reserved: int, outside: int, allocated: int, step_peak: int,
                 step_reserve: int | None = None, step_leaves_cached: int = 0) -> None:
        self.total, self.reserved_bytes, self.outside = total, reserved, outside
        self.allocated_bytes, self.step_peak = allocated, step_peak
        self.step_reserve = step_peak if step_reserve is None else step_reserve
        self.cached = 0
        self.step_leaves_cached = step_leaves_cached
        self.graph_pool = 0
        self.graphs: weakref.ref[object] | None = None
        self.calls: list[str] = []

    def synchronize(self) -> None:
        self.calls.append("synchronize")

    def reset_peak(self) -> None:
        self.calls.append("reset_peak")

    def allocated(self) -> int:
        return self.allocated_bytes

    def max_allocated(self) -> int:
        # Read once the step is done: what it freed stays cached by the allocator.
        self.cached, self.step_leaves_cached = self.cached + self.step_leaves_cached, 0
        return self.allocated_bytes + self.step_peak

    def reserved(self) -> int:
        return self.reserved_bytes + self.cached

    def max_reserved(self) -> int:
        return self.reserved_bytes + self.step_reserve

    def free_and_total(self) -> tuple[int, int]:
        self.calls.append("free")
        used = self.reserved_bytes + self.cached + self.outside + self.graph_pool
        return self.total - used, self.total

    def empty_cache(self) -> None:
        self.calls.append("empty_cache")
        self.cached = 0
        if self.graphs is not None and self.graphs() is None:
            self.graph_pool = 0  # the graphs were dropped: their pool goes back

    def capture_begins(self, pool: int) -> object:
        """What capturing does to the readings; returns the graphs, whose pool lives with them."""
        self.cached = 0
        self.graph_pool = pool
        graphs = Graphs()
        self.graphs = weakref.ref(graphs)
        return graphs


class Graphs:
    """Stands for captured graphs (weak-referenceable, unlike `object()`)."""


@pytest.mark.parametrize("with_graphs", [True, False])
def test_the_profile_measures_the_graphs_between_the_step_and_the_readings(
    tiny_llama: TinyModel, with_graphs: bool
) -> None:
    checkpoint = load_checkpoint(tiny_llama.gguf_path)
    model = build_model(checkpoint, "cpu", torch.float32)
    config = checkpoint.model_config
    block_size = 16
    query_lens = profile_query_lens(40, 3, config.max_position_embeddings)
    step_blocks = sum(math.ceil(n / block_size) for n in query_lens)
    # The step reserves more than it allocates at its peak (rounding, fragmentation) and leaves
    # 2 GiB cached, which the capture's emptying of the cache would give back mid-reading.
    memory = ScriptedMemory(total=80 * GIB, reserved=18 * GIB, outside=GIB, allocated=16 * GIB,
                            step_peak=3 * GIB, step_reserve=4 * GIB, step_leaves_cached=2 * GIB)
    made: list[int] = []
    captured: list[list[torch.Tensor]] = []

    def make_caches(num_blocks: int) -> list[torch.Tensor]:
        made.append(num_blocks)
        shape = (2, num_blocks, block_size, config.num_key_value_heads, config.head_dim)
        return [torch.zeros(shape) for _ in range(config.num_hidden_layers)]

    def capture(caches: list[torch.Tensor]) -> object:
        memory.calls.append("capture")
        captured.append(caches)
        return memory.capture_begins(3 * GIB // 2)

    profile = profile_cuda_memory(
        model, PortableAttentionBackend(), torch.device("cpu"), query_lens, block_size,
        make_caches, gpu_memory_utilization=0.9, bytes_per_block=MIB,
        capture_graphs=capture if with_graphs else None, memory=memory,
    )

    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    graphs = 3 * GIB // 2 if with_graphs else 0
    assert profile.weights_bytes == weights
    assert profile.peak_activation_bytes == 4 * GIB  # what the step reserved, not allocated
    assert profile.non_torch_bytes == GIB  # read after the graphs' pool went back
    assert profile.cuda_graph_bytes == graphs  # not hidden by the cache emptied mid-capture
    headroom = runtime_headroom_bytes(config.num_hidden_layers)
    assert profile.headroom_bytes == headroom
    expected = (int(0.9 * 80 * GIB) - weights - 4 * GIB - GIB - graphs - headroom) // MIB
    assert profile.num_kv_blocks == expected
    # The temporary cache holds the step's blocks and, for the graphs, the padding block.
    assert made == [step_blocks + int(with_graphs)]
    if with_graphs:
        assert len(captured) == 1 and captured[0][0].shape[1] == step_blocks + 1
        # The step wrote its blocks before the capture saw the cache.
        assert bool(captured[0][0][0, 0].abs().sum() > 0)
        capture_at = memory.calls.index("capture")
        assert memory.calls[capture_at - 3 : capture_at] == ["synchronize", "empty_cache", "free"]
        assert memory.calls[capture_at + 1 : capture_at + 4] == ["synchronize", "empty_cache", "free"]
    else:
        assert "capture" not in memory.calls


def test_measure_graph_memory_is_the_drop_in_free_memory_with_the_graphs_alive() -> None:
    memory = ScriptedMemory(total=10 * GIB, reserved=GIB, outside=0, allocated=0, step_peak=0)
    held: list[object] = []

    def capture() -> object:
        held.append(memory.capture_begins(300 * MIB))
        return held[-1]

    taken, graphs = measure_graph_memory(memory, capture)
    assert (taken, graphs) == (300 * MIB, held[0])

    # Memory cached before the capture (a profiled step's leftovers) comes back while capturing:
    # it must not hide the pool.
    del graphs
    held.clear()
    memory.empty_cache()
    memory.cached = 2 * GIB
    assert measure_graph_memory(memory, capture)[0] == 300 * MIB

    def frees_memory() -> object:  # a capture that ends with more free memory reads as 0
        memory.graph_pool = 0
        return held[0]

    memory.graph_pool = 100 * MIB
    assert measure_graph_memory(memory, frees_memory)[0] == 0


def test_the_headroom_is_kept_from_the_cache_and_grows_with_the_cache_tensors() -> None:
    assert runtime_headroom_bytes(0) == RUNTIME_HEADROOM_BYTES
    assert runtime_headroom_bytes(60) == RUNTIME_HEADROOM_BYTES + 60 * ALLOCATION_ROUNDING_BYTES
    common = dict(total_bytes=80 * GIB, weights_bytes=16 * GIB, peak_activation_bytes=4 * GIB,
                  non_torch_bytes=GIB, gpu_memory_utilization=0.9, bytes_per_block=2 * MIB)
    without = profile_kv_cache_memory(**common)
    kept = profile_kv_cache_memory(**common, headroom_bytes=GIB)
    assert without.num_kv_blocks - kept.num_kv_blocks == GIB // (2 * MIB)
    assert (kept.headroom_bytes, without.headroom_bytes) == (GIB, 0)
    with pytest.raises(ValueError, match="headroom_bytes"):
        profile_kv_cache_memory(**common, headroom_bytes=-1)
    with pytest.raises(InsufficientMemoryError, match="headroom"):
        profile_kv_cache_memory(**common, headroom_bytes=60 * GIB)
