"""The replica router: least outstanding requests, prefix affinity unless much busier; and the
replica set's combined counters. Pure logic: no Ray."""

from __future__ import annotations

import dataclasses

import pytest
from ziggurat_core.engine.config import EngineConfig
from ziggurat_core.engine.replicas.router import ReplicaRouter, prefix_key
from ziggurat_core.engine.replicas.stats import combine_stats
from ziggurat_core.engine.reports import EngineStats


def test_short_prompts_have_no_affinity_key() -> None:
    assert prefix_key(None, 4) is None
    assert prefix_key([1, 2, 3], 4) is None
    assert prefix_key([1, 2, 3, 4], 4) == prefix_key([1, 2, 3, 4, 99], 4)
    assert prefix_key([1, 2, 3, 4], 4) != prefix_key([1, 2, 3, 5], 4)


def test_least_outstanding_wins_without_affinity() -> None:
    router = ReplicaRouter(3)
    chosen = []
    for _ in range(6):
        index = router.choose(None, [0, 1, 2])
        assert index is not None
        router.start(index, None)
        chosen.append(index)
    assert sorted(chosen) == [0, 0, 1, 1, 2, 2]
    router.finish(1)
    assert router.choose(None, [0, 1, 2]) == 1


def test_only_live_replicas_are_chosen() -> None:
    router = ReplicaRouter(2)
    router.start(1, None)
    assert router.choose(None, [1]) == 1
    assert router.choose(None, []) is None


def test_a_shared_prefix_returns_to_its_replica_until_it_is_much_busier() -> None:
    router = ReplicaRouter(2, prefix_tokens=4, max_imbalance=2)
    key = prefix_key([7, 7, 7, 7, 1], 4)
    router.start(1, None)  # replica 1 busier, but it will own the prefix
    router.start(1, key)
    assert router.choose(key, [0, 1]) == 1  # 2 vs 0: within the allowed imbalance
    router.start(1, key)
    assert router.choose(key, [0, 1]) == 0  # 3 vs 0: recomputing the prefix is cheaper
    assert router.choose(None, [0, 1]) == 0


def test_a_restarted_replica_loses_its_prefixes() -> None:
    router = ReplicaRouter(2, prefix_tokens=2)
    key = prefix_key([5, 6], 2)
    router.start(1, key)
    router.finish(1)
    router.start(0, None)
    assert router.choose(key, [0, 1]) == 1
    router.forget(1)
    router.start(0, None)
    router.finish(0)
    router.finish(0)
    assert router.choose(key, [0, 1]) == 0  # tie on load: the lower index, no affinity left


def test_affinity_keys_are_bounded() -> None:
    router = ReplicaRouter(2, prefix_tokens=1, max_keys=2)
    keys = [prefix_key([i], 1) for i in range(3)]
    for key in keys:
        router.start(1, key)
        router.finish(1)
    router.start(1, None)  # 1 busier: only a remembered key sends a request there
    assert router.choose(keys[0], [0, 1]) == 0  # evicted, least recently used
    assert router.choose(keys[2], [0, 1]) == 1


def _stats(**changes: float) -> EngineStats:
    base = EngineStats(running=0, waiting=0, kv_blocks_total=100, kv_blocks_used=0, kv_usage=0.0,
                       kv_waste=0.0, kv_cache_bytes=1000, block_size=16,
                       prefix_cache_hit_rate=0.0, peak_kv_usage=0.0, peak_kv_waste=0.0,
                       prompt_tokens=0, generation_tokens=0, steps=0, preemptions=0,
                       uptime_s=1.0)
    return dataclasses.replace(base, **changes)


def test_combined_stats_add_counts_and_weigh_rates() -> None:
    a = _stats(running=2, waiting=1, kv_blocks_used=10, kv_waste=0.5, prompt_tokens=100,
               prefix_cache_hit_rate=0.0, generation_tokens=5, steps=3, peak_kv_usage=0.2)
    b = _stats(running=1, kv_blocks_used=30, kv_waste=0.1, prompt_tokens=300,
               prefix_cache_hit_rate=0.8, generation_tokens=7, steps=4, peak_kv_usage=0.5)
    combined = combine_stats([a, b], uptime_s=9.0, errored=False)
    assert (combined.running, combined.waiting) == (3, 1)
    assert (combined.kv_blocks_total, combined.kv_blocks_used) == (200, 40)
    assert combined.kv_usage == 0.2
    assert abs(combined.kv_waste - (0.5 * 10 + 0.1 * 30) / 40) < 1e-12
    assert abs(combined.prefix_cache_hit_rate - 0.6) < 1e-12
    assert (combined.generation_tokens, combined.steps, combined.kv_cache_bytes) == (12, 7, 2000)
    assert combined.peak_kv_usage == 0.5 and combined.uptime_s == 9.0


def test_combined_stats_of_no_replica_are_empty() -> None:
    combined = combine_stats([], uptime_s=1.0, errored=False)
    assert combined.kv_blocks_total == 0 and combined.kv_usage == 0.0


def test_the_in_process_engine_refuses_replica_settings() -> None:
    from ziggurat_core.engine import InferenceEngine

    with pytest.raises(ValueError, match="replica set"):
        InferenceEngine(EngineConfig(model="unused.gguf", num_replicas=2))
