"""Serving benchmark: N concurrent streaming chat requests against a Ziggurat server.

Reports output tokens/s, requests/s, time to first token (TTFT) and inter-token latency (ITL)
p50/p99 at each concurrency, then runs the same requests through an in-process AsyncEngine
with the server's engine settings, and prints the server's throughput as a ratio of the
engine's (what HTTP + SSE cost).

    python benchmarks/serving.py                       # starts `ziggurat-server serve --model default`
    python benchmarks/serving.py --url http://127.0.0.1:8000 --concurrency 1 8 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
from machine import machine_info

TOPICS = ["the ocean", "a lighthouse", "mountains", "a robot", "the moon", "a library",
          "autumn", "a train journey", "coffee", "a garden", "the desert", "a violin"]


@dataclass
class RequestResult:
    sent: float  # perf_counter() when the request went out
    ttft: float = float("nan")  # seconds from sending to the first token
    itls: list[float] = field(default_factory=list)  # gaps between later tokens
    output_tokens: int = 0
    last_token_at: float | None = None

    def record_token(self) -> None:
        """A content delta arrived now: the first sets TTFT, later ones add an ITL."""
        now = time.perf_counter()
        if self.last_token_at is None:
            self.ttft = now - self.sent
        else:
            self.itls.append(now - self.last_token_at)
        self.last_token_at = now


@dataclass
class RunResult:
    concurrency: int
    wall_s: float
    results: list[RequestResult]

    @property
    def output_tokens(self) -> int:
        return sum(r.output_tokens for r in self.results)

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.wall_s

    @property
    def requests_per_s(self) -> float:
        return len(self.results) / self.wall_s


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def messages_for(index: int) -> list[dict[str, str]]:
    topic = TOPICS[index % len(TOPICS)]
    return [{"role": "user", "content": f"Write a short poem about {topic}. (#{index})"}]


# --------------------------------------------------------------------------- over HTTP
async def one_http_request(http: httpx.AsyncClient, index: int, max_tokens: int,
                           model: str) -> RequestResult:
    body = {"model": model, "messages": messages_for(index), "max_tokens": max_tokens,
            "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    result = RequestResult(sent=time.perf_counter())
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                result.output_tokens = chunk["usage"]["completion_tokens"]
            if not chunk["choices"] or not chunk["choices"][0]["delta"].get("content"):
                continue
            result.record_token()
    return result


async def run_http(url: str, model: str, concurrency: int, num_requests: int,
                   max_tokens: int, api_key: str | None) -> RunResult:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits,
                                 timeout=httpx.Timeout(3600.0)) as http:

        async def bounded(index: int) -> RequestResult:
            async with gate:
                return await one_http_request(http, index, max_tokens, model)

        started = time.perf_counter()
        results = await asyncio.gather(*(bounded(i) for i in range(num_requests)))
        return RunResult(concurrency, time.perf_counter() - started, list(results))


# --------------------------------------------------------------------------- in-process
async def one_engine_request(engine: Any, index: int, max_tokens: int) -> RequestResult:
    from ziggurat_core.engine.sampling_params import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    result = RequestResult(sent=time.perf_counter())
    async for output in engine.generate(f"bench-{uuid.uuid4().hex}", messages=messages_for(index),
                                        sampling_params=params):
        completion = output.outputs[0]
        result.output_tokens = len(completion.token_ids)
        if not completion.delta_text:
            continue
        result.record_token()
    return result


async def run_engine(engine: Any, concurrency: int, num_requests: int,
                     max_tokens: int) -> RunResult:
    gate = asyncio.Semaphore(concurrency)

    async def bounded(index: int) -> RequestResult:
        async with gate:
            return await one_engine_request(engine, index, max_tokens)

    started = time.perf_counter()
    results = await asyncio.gather(*(bounded(i) for i in range(num_requests)))
    return RunResult(concurrency, time.perf_counter() - started, list(results))


def load_engine_like(url: str, api_key: str | None) -> Any:
    """An in-process AsyncEngine with exactly the server's engine settings."""
    from ziggurat_core.engine.async_engine import AsyncEngine
    from ziggurat_core.engine.config import EngineConfig

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    info = httpx.get(f"{url}/v1/info", headers=headers, timeout=60).json()
    return AsyncEngine.from_config(EngineConfig(**info["engine"]["config"]))


# --------------------------------------------------------------------------- server process
def start_server(model: str, extra: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "ziggurat_server.cli", "serve", "--model", model,
               "--port", str(port), *extra]
    process = subprocess.Popen(command)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.terminate()
    raise SystemExit("server did not become ready")


# --------------------------------------------------------------------------- report
def row(label: str, run: RunResult) -> str:
    ttfts = [r.ttft * 1000 for r in run.results]
    itls = [gap * 1000 for r in run.results for gap in r.itls]
    return (f"| {label} | {run.concurrency} | {len(run.results)} | {run.tokens_per_s:.1f} | "
            f"{run.requests_per_s:.2f} | {percentile(ttfts, 50):.0f} | {percentile(ttfts, 99):.0f} | "
            f"{percentile(itls, 50):.1f} | {percentile(itls, 99):.1f} |")


HEADER = ("| path | concurrency | requests | output tok/s | req/s | TTFT p50 ms | TTFT p99 ms | "
          "ITL p50 ms | ITL p99 ms |\n|---|---|---|---|---|---|---|---|---|")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server (default: start one)")
    parser.add_argument("--model", default="default", help="model for the server this starts")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra argument for the server this starts (repeatable)")
    parser.add_argument("--api-key")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests-per-level", type=int, default=None,
                        help="requests per concurrency level (default: 2 x concurrency, >= 8)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--no-engine-baseline", action="store_true",
                        help="skip the in-process engine comparison")
    args = parser.parse_args()
    # The same OpenMP setting the server CLI uses (ziggurat_server.cli), so the in-process
    # baseline is comparable.
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = "20000"

    process = None
    url = args.url
    if url is None:
        process, url = start_server(args.model, args.server_arg)
    try:
        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        model = httpx.get(f"{url}/v1/models", headers=headers, timeout=60).json()["data"][0]["id"]
        plan = [(c, args.requests_per_level or max(8, 2 * c)) for c in args.concurrency]
        # One untimed request first: lazy initialisation must not count against level 1.
        asyncio.run(run_http(url, model, 1, 1, 4, args.api_key))
        server_runs = [asyncio.run(run_http(url, model, c, n, args.max_tokens, args.api_key))
                       for c, n in plan]
        engine_runs: list[RunResult] = []
        if not args.no_engine_baseline:
            engine = load_engine_like(url, args.api_key)
            try:
                asyncio.run(run_engine(engine, 1, 1, 4))
                engine_runs = [asyncio.run(run_engine(engine, c, n, args.max_tokens))
                               for c, n in plan]
            finally:
                engine.shutdown()
    finally:
        if process is not None:
            process.terminate()
            process.wait(60)

    print(f"\nmodel {model}, {args.max_tokens} output tokens per request (ignore_eos, greedy)\n")
    print(HEADER)
    for index, run in enumerate(server_runs):
        print(row("server (HTTP+SSE)", run))
        if engine_runs:
            print(row("in-process engine", engine_runs[index]))
    if engine_runs:
        print()
        for server_run, engine_run in zip(server_runs, engine_runs, strict=True):
            ratio = server_run.tokens_per_s / engine_run.tokens_per_s
            print(f"concurrency {server_run.concurrency}: server / engine throughput = {ratio:.2f}")
    print(json.dumps({
        "benchmark": "serving",
        "machine": machine_info(),
        "max_tokens": args.max_tokens,
        "runs": [summary("server", run) for run in server_runs]
        + [summary("engine", run) for run in engine_runs],
    }, indent=2))


def summary(path: str, run: RunResult) -> dict[str, Any]:
    ttfts = [r.ttft for r in run.results]
    itls = [gap for r in run.results for gap in r.itls]
    return {
        "path": path,
        "concurrency": run.concurrency,
        "requests": len(run.results),
        "output_tokens_per_s": round(run.tokens_per_s, 1),
        "ttft_p50_ms": round(percentile(ttfts, 50) * 1000, 1),
        "itl_p50_ms": round(percentile(itls, 50) * 1000, 2),
        "itl_p99_ms": round(percentile(itls, 99) * 1000, 2),
    }


if __name__ == "__main__":
    main()
