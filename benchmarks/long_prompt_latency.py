"""Long prompts against running work (issue 11): does a huge or long prompt stall anyone else?

Two measurements against one real `ziggurat-server` (the default model unless --model):

- **/health while 2 MB prompts are rejected.** Clients send 2 MB text prompts (under
  --max-request-bytes, so each is parsed, tokenised and then refused for its length with a 400)
  one after another, while /health is polled; the /health latency percentiles are reported
  beside the same poll on the idle server.
- **Inter-token latency of 8 streams while long prompts arrive.** 8 streams decode; in
  alternating phases nothing else arrives (`quiet`), long text prompts are tokenised through
  /tokenize (`tokenize`: the frontend's work alone), or long valid completions arrive
  (`generate`: tokenising plus the engine's prefill of the long prompt). The phases alternate
  within one run (`--rounds` times each) so that a change of machine load touches all of them
  alike. ITL p50/p99 per phase, and where the CPU went meanwhile (the server's threads by nice
  value, this benchmark's processes, the rest of the machine; Linux, for a server it starts).

The long prompts come from a process of their own at nice `--sender-nice` (19): in a
deployment the clients run on other machines, and a sender at the lowest priority models that
on a single host without slowing down the stream readers, whose timing is the measurement and
which stay at normal priority. `--sender-nice 0` measures a client competing for the cores.

    python benchmarks/long_prompt_latency.py
    python benchmarks/long_prompt_latency.py --rounds 5 --huge-bytes 2000000 --long-tokens 1500
    python benchmarks/long_prompt_latency.py --skip health --server-arg=--frontend-nice --server-arg=0
    # before/after in one run: two servers, every phase against both, alternated each round
    python benchmarks/long_prompt_latency.py --skip health --phases quiet generate \
        --server-arg=--max-prefill-tokens-while-decoding=0 --compare-arg=--max-prefill-tokens-while-decoding=64
    # the prefill pacer against the cap alone (both capped at 64); streams long enough that
    # several paced long prompts are answered within each window
    python benchmarks/long_prompt_latency.py --skip health --phases quiet generate --stream-tokens 512 \
        --server-arg=--max-decode-slowdown=0 --compare-arg=--max-decode-slowdown=0.25

With `--compare-arg`, a second server (the same `--server-arg`s plus those) runs beside the first
and every ITL phase of every round runs against both, one after the other, so that both see the
same machine load; `itl_compare` reports the second's phases and `ratios_compare_to_base`.

Prints one JSON object, with the machine it ran on. Run it on a quiet machine for figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from long_prompt_sender import SenderProcess
from machine import machine_info
from process_cpu import CpuSnapshot
from serving import percentile, start_server

PHASES = ("quiet", "tokenize", "generate")
WORDS = ("river", "stone", "lamp", "orbit", "cedar", "violet", "engine", "harbor", "quartz",
         "meadow", "signal", "copper", "lantern", "glacier", "thunder", "pepper")


def text_of(num_words: int, seed: int) -> str:
    """Plain words in a fixed random order: a prompt the tokenizer must really work through."""
    draw = random.Random(seed)
    return " ".join(draw.choice(WORDS) for _ in range(num_words))


def ms(values: list[float]) -> dict[str, float]:
    return {"count": len(values),
            "p50_ms": round(percentile(values, 50) * 1000, 2),
            "p90_ms": round(percentile(values, 90) * 1000, 2),
            "p99_ms": round(percentile(values, 99) * 1000, 2),
            "max_ms": round(max(values, default=float("nan")) * 1000, 2)}


# --------------------------------------------------------------------------- /health
async def poll_health(http: httpx.AsyncClient, until: asyncio.Event, every_s: float
                      ) -> list[float]:
    latencies = []
    while not until.is_set():
        sent = time.perf_counter()
        response = await http.get("/health")
        latencies.append(time.perf_counter() - sent)
        if response.status_code != 200:
            raise RuntimeError(f"/health answered {response.status_code}")
        await asyncio.sleep(every_s)
    return latencies


async def health_during_huge_prompts(url: str, model: str, huge_bytes: int, count: int,
                                     senders: int, idle_s: float, every_s: float
                                     ) -> dict[str, Any]:
    """/health latency on the idle server, then while `count` huge prompts are rejected."""
    huge = text_of(huge_bytes // 4, seed=1)[:huge_bytes]  # words are 4-8 bytes with a space
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        idle_done = asyncio.Event()
        idle = asyncio.create_task(poll_health(http, idle_done, every_s))
        await asyncio.sleep(idle_s)
        idle_done.set()
        idle_latencies = await idle

        rejections: list[float] = []
        statuses: dict[str, int] = {}
        remaining = list(range(count))

        async def send() -> None:
            while remaining:
                remaining.pop()
                sent = time.perf_counter()
                response = await http.post("/v1/completions", json={
                    "model": model, "prompt": huge, "max_tokens": 1})
                rejections.append(time.perf_counter() - sent)
                statuses[str(response.status_code)] = statuses.get(str(response.status_code), 0) + 1

        busy_done = asyncio.Event()
        busy = asyncio.create_task(poll_health(http, busy_done, every_s))
        await asyncio.gather(*(send() for _ in range(senders)))
        busy_done.set()
        busy_latencies = await busy
    return {"prompt_bytes": len(huge.encode()), "prompts": count, "senders": senders,
            "prompt_statuses": statuses, "rejection_latency": ms(rejections),
            "health_idle": ms(idle_latencies), "health_during_huge_prompts": ms(busy_latencies)}


# --------------------------------------------------------------------------- ITL
@dataclass
class Stream:
    gaps: list[float] = field(default_factory=list)
    first_token: asyncio.Event = field(default_factory=asyncio.Event)
    last_at: float | None = None


async def run_stream(http: httpx.AsyncClient, model: str, index: int, max_tokens: int,
                     stream: Stream) -> None:
    body = {"model": model, "prompt": f"Once upon a time, story number {index},",
            "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True}
    async with http.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            if not json.loads(line[6:])["choices"]:
                continue
            now = time.perf_counter()
            if stream.last_at is None:
                stream.first_token.set()
            else:
                stream.gaps.append(now - stream.last_at)
            stream.last_at = now


@dataclass
class PhaseResult:
    gaps: list[float]
    long_prompts_sent: int  # answered within the window
    window_s: float  # from the streams' first tokens to their end
    cpu: dict[str, Any] | None  # CpuSnapshot.until of the window the long prompts arrived in
    # The engine's CPU team in the window (--adaptive-threads): the times it gave a core back,
    # and its size at the end; None from a server whose /v1/info does not say.
    thread_yields: int | None = None
    threads_at_end: int | None = None


async def engine_threads(http: httpx.AsyncClient) -> tuple[int | None, int | None]:
    """The server's engine team (`cpu_thread_yields`, `cpu_threads`) from /v1/info."""
    stats = (await http.get("/v1/info")).json().get("engine", {}).get("stats", {})
    return stats.get("cpu_thread_yields"), stats.get("cpu_threads")


async def itl_phase(url: str, model: str, phase: str, streams: int, max_tokens: int,
                    long_text: str, rate: float | None, sender_nice: int,
                    server_pid: int | None) -> PhaseResult:
    """One phase: `streams` streams of `max_tokens`; once each has its first token, long prompts
    start arriving (not in `quiet`) from a sender process at nice `sender_nice` until the
    streams end. The gaps counted are those after every stream has started, so all phases time
    the same steady decode."""
    limits = httpx.Limits(max_connections=streams + 4)
    sender = None
    if phase != "quiet":
        sender = SenderProcess(url, model, phase, long_text, rate, sender_nice)
        await sender.wait_ready()  # its start-up stays out of the measured window
    async with httpx.AsyncClient(base_url=url, timeout=3600, limits=limits) as http:
        states = [Stream() for _ in range(streams)]
        tasks = [asyncio.create_task(run_stream(http, model, i, max_tokens, state))
                 for i, state in enumerate(states)]
        await asyncio.gather(*(state.first_token.wait() for state in states))
        counted_from = [len(state.gaps) for state in states]
        clients = [os.getpid()] + ([sender.process.pid] if sender is not None and
                                   sender.process.pid is not None else [])
        before = CpuSnapshot.take(server_pid, clients) if server_pid is not None else None
        yields_before, _ = await engine_threads(http)
        window_start = time.perf_counter()
        if sender is not None:
            sender.go.set()
        await asyncio.gather(*tasks)
        window_s = time.perf_counter() - window_start
        cpu = (before.until(CpuSnapshot.take(before.server_pid, clients))
               if before is not None else None)
        sent = await sender.finish() if sender is not None else 0
        yields_after, threads = await engine_threads(http)
    gaps = [gap for state, start in zip(states, counted_from, strict=True)
            for gap in state.gaps[start:]]
    yields = (yields_after - yields_before
              if yields_after is not None and yields_before is not None else None)
    return PhaseResult(gaps, sent, window_s, cpu, yields, threads)


def mean_cores(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """The cores each group used over several windows, weighted by their length."""
    wall = sum(window["wall_s"] for window in windows)
    groups = sorted({name for window in windows for name in window["cores_used"]})
    return {"wall_s": round(wall, 2), "cores_used": {
        name: round(sum(window["cores_used"].get(name, 0.0) * window["wall_s"]
                        for window in windows) / wall, 3) for name in groups}}


async def long_prompt_text(url: str, model: str, tokens: int) -> str:
    """A text of about `tokens` tokens for the served tokenizer (measured, then cut)."""
    words = text_of(tokens * 2, seed=2)
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        count = (await http.post("/tokenize", json={"model": model, "prompt": words})).json()["count"]
    return " ".join(words.split()[:max(1, len(words.split()) * tokens // count)])


# --------------------------------------------------------------------------- main
@dataclass
class Server:
    """One server the ITL phases run against: `label` names it in the report."""

    label: str
    url: str
    pid: int | None
    args: list[str]
    process: subprocess.Popen[bytes] | None = None


def summarise(results: dict[str, list[PhaseResult]]) -> dict[str, Any]:
    phases: dict[str, Any] = {}
    for phase, runs in results.items():
        sent = sum(run.long_prompts_sent for run in runs)
        phases[phase] = {**ms([gap for run in runs for gap in run.gaps]),
                         "long_prompts_sent": sent, "long_prompts_per_s": round(
                             sent / sum(run.window_s for run in runs), 2)}
        windows = [run.cpu for run in runs if run.cpu is not None]
        if windows:
            phases[phase]["cpu"] = mean_cores(windows)
        if all(run.thread_yields is not None for run in runs):
            phases[phase]["engine_thread_yields"] = sum(run.thread_yields or 0 for run in runs)
            phases[phase]["engine_threads_at_end"] = [run.threads_at_end for run in runs]
    return phases


def ratios(base: dict[str, Any], other: dict[str, Any]) -> dict[str, dict[str, float]]:
    """other / base for each phase's percentiles and arrival rate (below 1: `other` is lower;
    None where the base is 0, as the `quiet` phase's arrival rate)."""
    keys = ("p50_ms", "p90_ms", "p99_ms", "max_ms", "long_prompts_per_s")
    return {phase: {key: round(other[phase][key] / base[phase][key], 3) if base[phase][key] else
                    None for key in keys} for phase in base}


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:  # still draining a backlog past its shutdown timeout
        process.kill()
        process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server (default: start one)")
    parser.add_argument("--model", default="default", help="model for the server this starts")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra argument for the server this starts (repeatable)")
    parser.add_argument("--compare-arg", action="append", default=None, metavar="ARG",
                        help="start a second server with the --server-args plus these "
                             "(repeatable; an empty one adds nothing) and run every ITL phase "
                             "against both, alternated within each round, reporting each and "
                             "the ratios compare / base")
    parser.add_argument("--huge-bytes", type=int, default=2_000_000)
    parser.add_argument("--huge-prompts", type=int, default=6)
    parser.add_argument("--huge-senders", type=int, default=2)
    parser.add_argument("--health-every", type=float, default=0.02, help="seconds between polls")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--stream-tokens", type=int, default=96)
    parser.add_argument("--long-tokens", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=3, help="times each ITL phase runs")
    parser.add_argument("--skip", choices=("health", "itl"), action="append", default=[])
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES),
                        help="the ITL phases to run, in this order each round")
    parser.add_argument("--long-prompt-rate", type=float, default=None, metavar="PER_S",
                        help="long prompts a second, sent whether or not earlier ones were "
                             "answered (default: one after another)")
    parser.add_argument("--sender-nice", type=int, default=19, choices=range(20), metavar="N",
                        help="nice value of the process that sends the long prompts (19: a "
                             "stand-in for remote clients; 0: a client competing with the "
                             "server for its cores)")
    parser.add_argument("--server-pid", type=int, default=None,
                        help="with --url: the server's process id, for its per-thread CPU")
    args = parser.parse_args()

    if args.compare_arg is not None and args.url is not None:
        parser.error("--compare-arg starts its servers itself: leave out --url")
    servers: list[Server] = []
    try:
        if args.url is None:
            process, url = start_server(args.model, ["--log-level", "warning", *args.server_arg])
            servers.append(Server("base", url, process.pid, args.server_arg, process))
        else:
            servers.append(Server("base", args.url, args.server_pid, args.server_arg))
        if args.compare_arg is not None:
            extra = [*args.server_arg, *(arg for arg in args.compare_arg if arg)]
            process, url = start_server(args.model, ["--log-level", "warning", *extra])
            servers.append(Server("compare", url, process.pid, extra, process))
        if not Path("/proc/self/task").is_dir():
            for server in servers:
                server.pid = None  # per-thread CPU needs Linux's /proc
        report = run(args, servers)
    finally:
        for server in servers:
            if server.process is not None:
                stop(server.process)
    print(json.dumps(report, indent=2))
    return 0


def run(args: argparse.Namespace, servers: list[Server]) -> dict[str, Any]:
    base = servers[0]
    report: dict[str, Any] = {"benchmark": "long_prompt_latency", "machine": machine_info(),
                              "server_args": args.server_arg, "sender_nice": args.sender_nice,
                              "long_prompt_rate": args.long_prompt_rate,
                              "load_average_at_start": os.getloadavg()}
    model = httpx.get(f"{base.url}/v1/models", timeout=60).json()["data"][0]["id"]
    window = httpx.post(f"{base.url}/tokenize", timeout=60, json={"model": model, "prompt": "hi"})
    report.update(model=model, max_model_len=window.json()["max_model_len"])
    for server in servers:
        # Untimed: the first request pays for lazy initialisation.
        httpx.post(f"{server.url}/v1/completions", timeout=600,
                   json={"model": model, "prompt": "hello", "max_tokens": 2}).raise_for_status()
    if "health" not in args.skip:
        report["health"] = asyncio.run(health_during_huge_prompts(
            base.url, model, args.huge_bytes, args.huge_prompts, args.huge_senders,
            idle_s=5.0, every_s=args.health_every))
    if "itl" not in args.skip:
        long_text = asyncio.run(long_prompt_text(base.url, model, args.long_tokens))
        results: dict[str, dict[str, list[PhaseResult]]] = {
            server.label: {phase: [] for phase in args.phases} for server in servers}
        for _ in range(args.rounds):
            for server in servers:  # alternated, so a change of machine load touches both
                for phase in args.phases:
                    results[server.label][phase].append(asyncio.run(itl_phase(
                        server.url, model, phase, args.streams, args.stream_tokens, long_text,
                        args.long_prompt_rate, args.sender_nice, server.pid)))
        settings = {"streams": args.streams, "stream_tokens": args.stream_tokens,
                    "long_prompt_tokens": args.long_tokens, "rounds": args.rounds}
        by_server = {label: summarise(phases) for label, phases in results.items()}
        report["itl"] = {**settings, "phases": by_server["base"]}
        if len(servers) > 1:
            compare = servers[1]
            report["itl_compare"] = {**settings, "server_args": compare.args,
                                     "phases": by_server["compare"],
                                     "ratios_compare_to_base": ratios(by_server["base"],
                                                                      by_server["compare"])}
    report["load_average_at_end"] = os.getloadavg()
    return report


if __name__ == "__main__":
    sys.exit(main())
