"""One `EngineStats` for a whole replica set, from each replica's own. No Ray, no torch."""

from __future__ import annotations

from collections.abc import Sequence

from ..reports import EngineStats


def combine_stats(snapshots: Sequence[EngineStats], *, uptime_s: float,
                  errored: bool) -> EngineStats:
    """Counts add up; usage is recomputed from the summed blocks; rates and wastes are weighted
    by each replica's share (blocks used; tokens for the prefix hit rate); peaks take the highest
    replica's."""
    blocks_total = sum(s.kv_blocks_total for s in snapshots)
    blocks_used = sum(s.kv_blocks_used for s in snapshots)
    prompt_tokens = sum(s.prompt_tokens for s in snapshots)

    def weighted(values: list[float], weights: list[int]) -> float:
        total = sum(weights)
        return sum(v * w for v, w in zip(values, weights, strict=True)) / total if total else 0.0

    return EngineStats(
        running=sum(s.running for s in snapshots),
        waiting=sum(s.waiting for s in snapshots),
        kv_blocks_total=blocks_total,
        kv_blocks_used=blocks_used,
        kv_usage=blocks_used / blocks_total if blocks_total else 0.0,
        kv_waste=weighted([s.kv_waste for s in snapshots], [s.kv_blocks_used for s in snapshots]),
        kv_cache_bytes=sum(s.kv_cache_bytes for s in snapshots),
        block_size=snapshots[0].block_size if snapshots else 0,
        prefix_cache_hit_rate=weighted([s.prefix_cache_hit_rate for s in snapshots],
                                       [s.prompt_tokens for s in snapshots]),
        peak_kv_usage=max((s.peak_kv_usage for s in snapshots), default=0.0),
        peak_kv_waste=max((s.peak_kv_waste for s in snapshots), default=0.0),
        prompt_tokens=prompt_tokens,
        generation_tokens=sum(s.generation_tokens for s in snapshots),
        steps=sum(s.steps for s in snapshots),
        preemptions=sum(s.preemptions for s in snapshots),
        uptime_s=uptime_s,
        errored=errored,
        cpu_threads=(None if any(s.cpu_threads is None for s in snapshots) or not snapshots
                     else sum(s.cpu_threads or 0 for s in snapshots)),
        cpu_thread_yields=sum(s.cpu_thread_yields for s in snapshots),
    )
