"""The server's Prometheus metrics: HTTP requests, tokens, latencies and engine gauges.

Each app owns its own `CollectorRegistry` (not prometheus_client's global one), so several apps
in one process (tests, embedding) count separately and never collide on a name."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector
from ziggurat_core.engine.reports import EngineStats

# The classic text format, as /metrics has always served it.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

# prometheus_client adds a `<name>_created` series per counter and histogram by default; /metrics
# never had them, and dashboards do not need them. (The switch is process-wide in the library.)
disable_created_metrics()

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0,
                    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
_REQUEST_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.http_requests = Counter("ziggurat_http_requests", "HTTP requests by route and status",
                                     ("route", "status"), registry=registry)
        self.finished_sequences = Counter(
            "ziggurat_request_finished", "generated sequences by finish reason", ("finish_reason",),
            registry=registry)
        self.prompt_tokens = Counter("ziggurat_prompt_tokens", "prompt tokens processed",
                                     registry=registry)
        self.generation_tokens = Counter("ziggurat_generation_tokens", "tokens generated",
                                         registry=registry)
        self.time_to_first_token = Histogram(
            "ziggurat_time_to_first_token_seconds", "time from request arrival to its first token",
            buckets=_LATENCY_BUCKETS, registry=registry)
        self.inter_token_latency = Histogram(
            "ziggurat_inter_token_latency_seconds", "time between consecutive output tokens",
            buckets=_LATENCY_BUCKETS, registry=registry)
        self.request_latency = Histogram(
            "ziggurat_e2e_request_latency_seconds", "time from arrival to the last token",
            buckets=_REQUEST_BUCKETS, registry=registry)
        self.running = Gauge("ziggurat_num_requests_running", "sequences being decoded",
                             registry=registry)
        self.waiting = Gauge("ziggurat_num_requests_waiting", "sequences waiting for a slot",
                             registry=registry)
        self.kv_usage = Gauge("ziggurat_kv_cache_usage_ratio", "fraction of KV blocks in use",
                              registry=registry)
        self.kv_blocks_used = Gauge("ziggurat_kv_cache_blocks_used", "KV blocks in use",
                                    registry=registry)
        self.kv_blocks_total = Gauge("ziggurat_kv_cache_blocks_total", "KV blocks in the cache",
                                     registry=registry)
        self.prefix_hit_rate = Gauge("ziggurat_prefix_cache_hit_rate",
                                     "fraction of prompt blocks served from the prefix cache",
                                     registry=registry)
        self.cpu_threads = Gauge("ziggurat_cpu_threads",
                                 "OpenMP threads the model runs with now on CPU, one fewer while "
                                 "other work on the host waits for a CPU (--adaptive-threads)",
                                 registry=registry)

        self.engine_totals = EngineTotals()
        registry.register(self.engine_totals)

        self.response_cache = ResponseCacheMetrics(registry)

    def render(self, engine_stats: EngineStats | None) -> bytes:
        """The exposition; the engine gauges are read now (they keep their last value while the
        engine is not serving)."""
        if engine_stats is not None:
            self.running.set(engine_stats.running)
            self.waiting.set(engine_stats.waiting)
            self.kv_usage.set(engine_stats.kv_usage)
            self.kv_blocks_used.set(engine_stats.kv_blocks_used)
            self.kv_blocks_total.set(engine_stats.kv_blocks_total)
            self.prefix_hit_rate.set(engine_stats.prefix_cache_hit_rate)
            if engine_stats.cpu_threads is not None:
                self.cpu_threads.set(engine_stats.cpu_threads)
            self.engine_totals.preemptions = engine_stats.preemptions
            self.engine_totals.cpu_thread_yields = engine_stats.cpu_thread_yields
        return generate_latest(self.registry)


class EngineTotals(Collector):
    """Counters whose total the engine keeps (its stats own them); the exposition reports the
    last total read rather than counting a second copy here."""

    def __init__(self) -> None:
        self.preemptions = 0
        self.cpu_thread_yields = 0

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "ziggurat_preemptions", "sequences preempted (KV blocks freed, recomputed later) "
            "because the KV cache ran out", value=self.preemptions)
        yield CounterMetricFamily(
            "ziggurat_cpu_thread_yields", "times the engine gave a CPU core back to other work "
            "waiting for one on the host (--adaptive-threads)", value=self.cpu_thread_yields)


class ResponseCacheMetrics:
    """The response cache's counters; the cache (server/response_cache.py) moves them."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.hits = Counter("ziggurat_response_cache_hits", "requests served from the response cache",
                            registry=registry)
        self.misses = Counter("ziggurat_response_cache_misses",
                              "cacheable requests not found in the response cache",
                              registry=registry)
        self.uncacheable = Counter(
            "ziggurat_response_cache_uncacheable",
            "requests that asked for the cache but whose output is not reproducible "
            "(sampled without a seed): never looked up nor stored", registry=registry)
        self.evictions = Counter("ziggurat_response_cache_evictions",
                                 "responses dropped from the response cache, by reason",
                                 ("reason",), registry=registry)
        for reason in ("expired", "capacity"):  # exposed at 0 before the first eviction
            self.evictions.labels(reason)
        self.entries = Gauge("ziggurat_response_cache_entries", "responses in the response cache",
                             registry=registry)
        self.bytes = Gauge("ziggurat_response_cache_bytes",
                           "bytes of response JSON in the response cache", registry=registry)
