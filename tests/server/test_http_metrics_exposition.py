"""The /metrics exposition users' dashboards rely on: every sample name, its type and HELP text.

Written down by hand so that a change of the implementation behind /metrics cannot rename,
retype or drop a series unnoticed."""

from __future__ import annotations

import httpx
from server_helpers import metric_value
from ziggurat_server.metrics import ServerMetrics

# sample name -> (family type, HELP text)
EXPECTED_SERIES = {
    "ziggurat_http_requests_total": ("counter", "HTTP requests by route and status"),
    "ziggurat_request_finished_total": ("counter", "generated sequences by finish reason"),
    "ziggurat_prompt_tokens_total": ("counter", "prompt tokens processed"),
    "ziggurat_generation_tokens_total": ("counter", "tokens generated"),
    **{
        f"ziggurat_{name}_seconds{suffix}": ("histogram", help_text)
        for name, help_text in (
            ("time_to_first_token", "time from request arrival to its first token"),
            ("inter_token_latency", "time between consecutive output tokens"),
            ("e2e_request_latency", "time from arrival to the last token"),
        )
        for suffix in ("_bucket", "_sum", "_count")
    },
    "ziggurat_num_requests_running": ("gauge", "sequences being decoded"),
    "ziggurat_num_requests_waiting": ("gauge", "sequences waiting for a slot"),
    "ziggurat_kv_cache_usage_ratio": ("gauge", "fraction of KV blocks in use"),
    "ziggurat_kv_cache_blocks_used": ("gauge", "KV blocks in use"),
    "ziggurat_kv_cache_blocks_total": ("gauge", "KV blocks in the cache"),
    "ziggurat_prefix_cache_hit_rate": ("gauge",
                                       "fraction of prompt blocks served from the prefix cache"),
    "ziggurat_preemptions_total": (
        "counter", "sequences preempted (KV blocks freed, recomputed later) because the KV cache "
                   "ran out"),
    "ziggurat_cpu_threads": (
        "gauge", "OpenMP threads the model runs with now on CPU, one fewer while other work on "
                 "the host waits for a CPU (--adaptive-threads)"),
    "ziggurat_cpu_thread_yields_total": (
        "counter", "times the engine gave a CPU core back to other work waiting for one on the "
                   "host (--adaptive-threads)"),
    "ziggurat_response_cache_hits_total": ("counter", "requests served from the response cache"),
    "ziggurat_response_cache_misses_total": (
        "counter", "cacheable requests not found in the response cache"),
    "ziggurat_response_cache_uncacheable_total": (
        "counter", "requests that asked for the cache but whose output is not reproducible "
                   "(sampled without a seed): never looked up nor stored"),
    "ziggurat_response_cache_evictions_total": (
        "counter", "responses dropped from the response cache, by reason"),
    "ziggurat_response_cache_entries": ("gauge", "responses in the response cache"),
    "ziggurat_response_cache_bytes": ("gauge", "bytes of response JSON in the response cache"),
}

LATENCY_BUCKETS = ("0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.075", "0.1", "0.25",
                   "0.5", "0.75", "1", "2.5", "5", "7.5", "10", "20", "40", "80", "+Inf")
REQUEST_BUCKETS = ("0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "20", "40", "80", "160",
                   "320", "+Inf")


def exposed_series(text: str) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """Each sample name with the type and HELP text of the family it appears under, and the
    sample lines themselves."""
    helps: dict[str, str] = {}
    types: dict[str, str] = {}
    series: dict[str, tuple[str, str]] = {}
    samples: list[str] = []
    family = ""
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_text = line[len("# HELP "):].partition(" ")
            helps[name] = help_text
        elif line.startswith("# TYPE "):
            family, _, kind = line[len("# TYPE "):].partition(" ")
            types[family] = kind
        elif line and not line.startswith("#"):
            samples.append(line)
            name = line.split("{", 1)[0].split(" ", 1)[0]
            assert family and name.startswith(family.removesuffix("_total")), line
            series[name] = (types[family], helps[family])
    return series, samples


def bucket_bounds(samples: list[str], name: str) -> tuple[str, ...]:
    bounds = []
    for line in samples:
        if line.startswith(name + "_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            bounds.append(le)
    return tuple(bounds)


def test_metrics_expose_the_pinned_series(client: httpx.Client) -> None:
    # One finished request, so every labelled family has at least one sample.
    body = client.post("/v1/completions", json={"prompt": [11, 12, 13], "max_tokens": 3,
                                                "ignore_eos": True}).json()
    assert body["choices"][0]["finish_reason"] == "length"
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    series, samples = exposed_series(response.text)
    assert series == EXPECTED_SERIES
    assert any(line.startswith(
        'ziggurat_http_requests_total{route="/v1/completions",status="200"} ') for line in samples)
    assert any(line.startswith('ziggurat_request_finished_total{finish_reason="length"} ')
               for line in samples)
    for name in ("ziggurat_time_to_first_token_seconds", "ziggurat_inter_token_latency_seconds"):
        assert [float(b) for b in bucket_bounds(samples, name)] == [
            float(b) for b in LATENCY_BUCKETS]
    assert [float(b) for b in bucket_bounds(samples, "ziggurat_e2e_request_latency_seconds")] == [
        float(b) for b in REQUEST_BUCKETS]


def test_two_apps_in_one_process_count_separately() -> None:
    first, second = ServerMetrics(), ServerMetrics()  # a shared registry would refuse the second
    first.prompt_tokens.inc(3)
    assert metric_value(first.render(None).decode(), "ziggurat_prompt_tokens_total") == 3
    assert metric_value(second.render(None).decode(), "ziggurat_prompt_tokens_total") == 0
