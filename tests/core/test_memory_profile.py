"""KV cache sizing on CUDA: the arithmetic with measured numbers injected, the shape of the
profiled step, and the dummy step itself run on CPU."""

from __future__ import annotations

import math

import pytest
import torch
from fixtures_models import TinyModel
from ziggurat_core.engine.attention.torch_backend import PortableAttentionBackend
from ziggurat_core.engine.config import EngineConfig, ModelConfig
from ziggurat_core.engine.kv_cache_plan import plan_kv_cache
from ziggurat_core.engine.loader import load_checkpoint
from ziggurat_core.engine.memory_profile import InsufficientMemoryError, profile_kv_cache_memory
from ziggurat_core.engine.memory_profiler import profile_query_lens, run_profile_step
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
