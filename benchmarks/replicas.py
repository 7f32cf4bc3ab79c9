"""Replica scaling: output tokens/s at 32 concurrent streams with 1 and with 2 engine replicas of
one thread each, the CPU time each process spends per generated token, and the time and memory it
takes to start N replicas.

Each configuration runs as a real `ziggurat-server serve` process: one replica is the in-process
engine (`--num-threads 1`), more are Ray actors (`--num-replicas N --replica-cpus 1`, one torch
thread each). Memory is the resident set of the server's whole process tree (the Ray processes
and replica workers are its descendants). A short warm-up round runs first, so the measured round
is the steady state. CPU milliseconds per generated token are summed per role (server, each
replica, raylet, gcs, other Ray processes) from the processes' own CPU times: unlike tokens/s they
hold on a machine other work shares. Prints one JSON object.

    python benchmarks/replicas.py                        # the default model, 1 and 2 replicas
    python benchmarks/replicas.py --model path/to/model.gguf --replicas 1 2 --max-tokens 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
from typing import Any

import httpx
import openai
import psutil
from machine import machine_info

PROMPTS = ["Tell me about the ocean.", "Describe a lighthouse.", "Write about mountains.",
           "Explain how a robot works.", "Describe the moon.", "Write about a library.",
           "Describe autumn.", "Tell me about a train journey."]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants."""
    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def tree_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) so far of a process and its descendants, by pid, with each
    process's role."""
    root = psutil.Process(pid)
    seen: dict[int, tuple[str, float]] = {}
    for process in [root, *root.children(recursive=True)]:
        try:
            seen[process.pid] = (role(process, pid), _cpu(process))
        except psutil.NoSuchProcess:
            continue
    return seen


def role(process: psutil.Process, server_pid: int) -> str:
    """What a process of the server's tree does, from its name and command line."""
    if process.pid == server_pid:
        return "server"
    command = " ".join(process.cmdline())
    if "ReplicaActor" in command:
        return f"replica (pid {process.pid})"
    if "RankActor" in command:
        return f"tensor-parallel rank (pid {process.pid})"
    for name in ("raylet", "gcs_server"):
        if name in command:
            return name
    return "other ray"


def cpu_per_token(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
                  tokens: int) -> dict[str, float]:
    """CPU milliseconds per generated token spent by each role between two `tree_cpu` reads."""
    spent: dict[str, float] = {}
    for pid, (name, seconds) in after.items():
        spent[name] = spent.get(name, 0.0) + seconds - before.get(pid, (name, 0.0))[1]
    spent["total"] = sum(spent.values())
    return {name: round(1000 * seconds / max(tokens, 1), 3) for name, seconds in spent.items()}


def start(model: str, replicas: int, port: int) -> tuple[subprocess.Popen[bytes], float]:
    placement = (["--num-threads", "1"] if replicas == 1 else
                 ["--num-replicas", str(replicas), "--replica-cpus", "1"])
    command = [sys.executable, "-m", "ziggurat_server.cli", "serve", "--model", model,
               "--port", str(port), "--log-level", "warning", *placement]
    began = time.monotonic()
    process = subprocess.Popen(command)
    while True:
        if process.poll() is not None:
            raise SystemExit(f"server with {replicas} replicas exited with {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process, time.monotonic() - began
        except httpx.TransportError:
            pass
        time.sleep(0.2)


async def streams(base_url: str, concurrency: int, max_tokens: int) -> dict[str, float]:
    async with openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="none", max_retries=0,
                                  timeout=600) as sdk:
        model = (await sdk.models.list()).data[0].id

        async def one(index: int) -> int:
            stream = await sdk.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": PROMPTS[index % len(PROMPTS)]}],
                max_tokens=max_tokens, stream=True, stream_options={"include_usage": True},
                extra_body={"ignore_eos": True})
            tokens = 0
            async for chunk in stream:
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
            return tokens

        began = time.monotonic()
        counts = await asyncio.gather(*(one(i) for i in range(concurrency)))
        elapsed = time.monotonic() - began
    return {"output_tokens": sum(counts), "seconds": elapsed,
            "output_tokens_per_s": sum(counts) / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=256,
                        help="tokens each stream generates in the measured round")
    parser.add_argument("--warmup-tokens", type=int, default=8,
                        help="tokens each stream generates in the unmeasured first round")
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": machine_info(), "concurrency": args.concurrency,
                               "max_tokens": args.max_tokens, "runs": []}
    for replicas in args.replicas:
        port = free_port()
        process, start_s = start(args.model, replicas, port)
        try:
            idle_rss = tree_rss(process.pid)
            base_url = f"http://127.0.0.1:{port}"
            asyncio.run(streams(base_url, args.concurrency, args.warmup_tokens))
            # The benchmark's own client shares the machine's cores: its CPU is counted too.
            client = psutil.Process()
            cpu_before = {**tree_cpu(process.pid), client.pid: ("client", _cpu(client))}
            run = asyncio.run(streams(base_url, args.concurrency, args.max_tokens))
            cpu_after = {**tree_cpu(process.pid), client.pid: ("client", _cpu(client))}
            cpu = cpu_per_token(cpu_before, cpu_after, int(run["output_tokens"]))
            results["runs"].append({"replicas": replicas, "start_s": start_s,
                                    "idle_rss_bytes": idle_rss, **run,
                                    "cpu_ms_per_token": cpu})
        finally:
            process.terminate()
            process.wait(60)
    base = results["runs"][0]["output_tokens_per_s"]
    for run in results["runs"]:
        run["speedup"] = run["output_tokens_per_s"] / base
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
