"""The server's Prometheus metrics: HTTP requests, tokens, latencies and engine gauges."""

from __future__ import annotations

from ziggurat_core.engine.reports import EngineStats

from .prometheus import Counter, Gauge, Histogram, render_all

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0,
                    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
_REQUEST_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)


class ServerMetrics:
    def __init__(self) -> None:
        self.http_requests = Counter("ziggurat_http_requests", "HTTP requests by route and status",
                                     ("route", "status"))
        self.finished_sequences = Counter(
            "ziggurat_request_finished", "generated sequences by finish reason", ("finish_reason",))
        self.prompt_tokens = Counter("ziggurat_prompt_tokens", "prompt tokens processed")
        self.generation_tokens = Counter("ziggurat_generation_tokens", "tokens generated")
        self.time_to_first_token = Histogram(
            "ziggurat_time_to_first_token_seconds", "time from request arrival to its first token",
            _LATENCY_BUCKETS)
        self.inter_token_latency = Histogram(
            "ziggurat_inter_token_latency_seconds", "time between consecutive output tokens",
            _LATENCY_BUCKETS)
        self.request_latency = Histogram(
            "ziggurat_e2e_request_latency_seconds", "time from arrival to the last token",
            _REQUEST_BUCKETS)
        self.running = Gauge("ziggurat_num_requests_running", "sequences being decoded")
        self.waiting = Gauge("ziggurat_num_requests_waiting", "sequences waiting for a slot")
        self.kv_usage = Gauge("ziggurat_kv_cache_usage_ratio", "fraction of KV blocks in use")
        self.kv_blocks_used = Gauge("ziggurat_kv_cache_blocks_used", "KV blocks in use")
        self.kv_blocks_total = Gauge("ziggurat_kv_cache_blocks_total", "KV blocks in the cache")
        self.prefix_hit_rate = Gauge("ziggurat_prefix_cache_hit_rate",
                                     "fraction of prompt blocks served from the prefix cache")

    def render(self, engine_stats: EngineStats | None) -> str:
        if engine_stats is not None:
            self.running.set(engine_stats.running)
            self.waiting.set(engine_stats.waiting)
            self.kv_usage.set(engine_stats.kv_usage)
            self.kv_blocks_used.set(engine_stats.kv_blocks_used)
            self.kv_blocks_total.set(engine_stats.kv_blocks_total)
            self.prefix_hit_rate.set(engine_stats.prefix_cache_hit_rate)
        return render_all([
            self.http_requests, self.finished_sequences, self.prompt_tokens,
            self.generation_tokens, self.time_to_first_token, self.inter_token_latency,
            self.request_latency, self.running, self.waiting, self.kv_usage, self.kv_blocks_used,
            self.kv_blocks_total, self.prefix_hit_rate,
        ])
