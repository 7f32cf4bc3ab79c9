"""Replica scaling: output tokens/s at 32 concurrent streams with 1 and with 2 engine replicas of
one thread each, the CPU time each process spends per generated token, and the time and memory it
takes to start N replicas.

Each configuration runs as a real `ziggurat-server serve` process: one replica is the in-process
engine (`--num-threads 1`), more are Ray actors (`--num-replicas N --replica-cpus 1`, one torch
thread each). Memory is the resident set of the server's whole process tree (the Ray processes
and replica workers are its descendants). A short warm-up round runs first, so the measured round
is the steady state. CPU milliseconds per generated token are summed per role (server, each
replica, raylet, gcs, other Ray processes) from the processes' own CPU times: unlike tokens/s they
hold on a machine other work shares. For each replica the busiest thread (its engine's stepping
thread) is also given alone, with the times other threads took its core from it (involuntary
context switches per 1,000 tokens): what a replica spends beyond its engine, and how often the
rest of the machine interrupts it. `--offline-reference` also runs, in the same session, N
offline one-thread `LLM`s side by side with 1/N of the streams each (no server, no Ray): the
engines' own CPU per token to compare the replicas with.

Both configurations run with the same `--stream-interval` (each value given is run, the servers
otherwise alike). The streams are read with the openai SDK (`--client openai`, the default) or
with httpx, the client package's SSE decoder and `json` (`--client sse`): either way every
chunk is parsed and the text put together, and the tokens are the usage's `completion_tokens`;
with `sse` the run also gives when the streams' first chunks came and when they ended (earliest
and latest, seconds from the start).
`--repeat K` runs the whole sequence K times, alternating, so that a loaded machine's drift
reaches every configuration; each run's speedup is against the first replica count's run of its
own round, interval and client. Prints one JSON object.

    python benchmarks/replicas.py                        # the default model, 1 and 2 replicas
    python benchmarks/replicas.py --model path/to/model.gguf --replicas 1 2 --max-tokens 32
    python benchmarks/replicas.py --replicas 1 2 --max-tokens 256 --offline-reference
    python benchmarks/replicas.py --stream-interval 1 8 --client openai sse --repeat 2
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
from typing import Any

import httpx
import openai
import psutil
from machine import machine_info
from ziggurat import SSEDecoder

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


def thread_stats(pid: int) -> dict[int, tuple[float, int]]:
    """CPU seconds and involuntary context switches so far of each thread of a process."""
    ticks = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[float, int]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as stat_file:
                stat = stat_file.read()
            with open(f"/proc/{pid}/task/{tid}/status") as status_file:
                status = status_file.read()
        except OSError:
            continue  # the thread ended
        fields = stat[stat.rindex(")") + 2:].split()  # after the name, which may hold spaces
        involuntary = int(status.split("nonvoluntary_ctxt_switches:")[1].split()[0])
        stats[int(tid)] = ((int(fields[11]) + int(fields[12])) / ticks, involuntary)
    return stats


def replica_threads(pid: int) -> dict[int, dict[int, tuple[float, int]]]:
    """`thread_stats` of every replica process of the server's tree, by pid."""
    found: dict[int, dict[int, tuple[float, int]]] = {}
    for process in psutil.Process(pid).children(recursive=True):
        try:
            if "ReplicaActor" in " ".join(process.cmdline()):
                found[process.pid] = thread_stats(process.pid)
        except (psutil.NoSuchProcess, FileNotFoundError):
            continue
    return found


def engine_threads(before: dict[int, dict[int, tuple[float, int]]],
                   after: dict[int, dict[int, tuple[float, int]]],
                   tokens: int) -> dict[str, dict[str, float]]:
    """Each replica's busiest thread between two `replica_threads` reads: CPU milliseconds per
    generated token (of all replicas, as `cpu_per_token`) and involuntary context switches per
    1,000 tokens, beside those of the replica's other threads together."""
    report: dict[str, dict[str, float]] = {}
    for pid, threads in after.items():
        spent = {tid: (cpu - before.get(pid, {}).get(tid, (0.0, 0))[0],
                       switches - before.get(pid, {}).get(tid, (0.0, 0))[1])
                 for tid, (cpu, switches) in threads.items()}
        if not spent:
            continue
        engine = max(spent, key=lambda tid: spent[tid][0])
        others = sum(cpu for tid, (cpu, _) in spent.items() if tid != engine)
        report[f"replica (pid {pid})"] = {
            "engine_thread_ms_per_token": round(1000 * spent[engine][0] / max(tokens, 1), 3),
            "other_threads_ms_per_token": round(1000 * others / max(tokens, 1), 3),
            "engine_thread_preemptions_per_1k_tokens": round(
                1000 * spent[engine][1] / max(tokens, 1), 1),
        }
    return report


def offline_worker(model: str, sequences: int, max_tokens: int) -> None:
    """One offline `LLM` of one thread generating for `sequences` chat streams at once (after
    a warm-up); prints its tokens and the CPU seconds its process spent on them."""
    from ziggurat_core.engine import SamplingParams
    from ziggurat_core.engine.llm import LLM

    llm = LLM(model=model, num_threads=1)
    messages: list[list[dict[str, object]]] = [
        [{"role": "user", "content": PROMPTS[index % len(PROMPTS)]}] for index in range(sequences)]
    llm.chat(messages, SamplingParams(max_tokens=8, ignore_eos=True), use_tqdm=False)
    began = time.process_time()
    outputs = llm.chat(messages, SamplingParams(max_tokens=max_tokens, ignore_eos=True),
                       use_tqdm=False)
    spent = time.process_time() - began
    print(json.dumps({"tokens": sum(len(o.outputs[0].token_ids) for o in outputs),
                      "cpu_s": spent}))


def offline_reference(model: str, engines: int, concurrency: int,
                      max_tokens: int) -> list[float]:
    """CPU milliseconds per token of `engines` offline one-thread engines running side by side
    (as the replicas do), each with its share of the streams."""
    command = [sys.executable, __file__, "--model", model, "--max-tokens", str(max_tokens),
               "--offline-worker", str(concurrency // engines)]
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE) for _ in range(engines)]
    costs = []
    for worker in workers:
        out, _ = worker.communicate()
        if worker.returncode != 0:
            raise SystemExit(f"offline reference engine exited with {worker.returncode}")
        result = json.loads(out.decode().strip().splitlines()[-1])
        costs.append(round(1000 * result["cpu_s"] / max(result["tokens"], 1), 3))
    return costs


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


def start(model: str, replicas: int, port: int, stream_interval: int
          ) -> tuple[subprocess.Popen[bytes], float]:
    placement = (["--num-threads", "1"] if replicas == 1 else
                 ["--num-replicas", str(replicas), "--replica-cpus", "1"])
    command = [sys.executable, "-m", "ziggurat_server.cli", "serve", "--model", model,
               "--port", str(port), "--log-level", "warning",
               "--stream-interval", str(stream_interval), *placement]
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


async def streams(base_url: str, concurrency: int, max_tokens: int, client: str
                  ) -> dict[str, float]:
    if client == "sse":
        return await sse_streams(base_url, concurrency, max_tokens)
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


async def sse_streams(base_url: str, concurrency: int, max_tokens: int) -> dict[str, float]:
    """`streams` read with httpx and the client package's SSE decoder: every event is decoded
    and its JSON parsed (the text put together, the finish reason and the usage read), without
    the openai SDK's typed chunk objects."""
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=f"{base_url}/v1", timeout=600, limits=limits) as http:
        model = (await http.get("/models")).json()["data"][0]["id"]

        began = time.monotonic()
        first_chunk: list[float] = []  # seconds from the start, per stream
        finished: list[float] = []

        async def one(index: int) -> int:
            body = {"model": model, "max_tokens": max_tokens, "stream": True,
                    "messages": [{"role": "user", "content": PROMPTS[index % len(PROMPTS)]}],
                    "stream_options": {"include_usage": True}, "ignore_eos": True}
            decoder = SSEDecoder()
            text: list[str] = []
            tokens, finish_reason, seen = 0, None, False
            async with http.stream("POST", "/chat/completions", json=body) as response:
                response.raise_for_status()
                async for data in response.aiter_bytes():
                    if not seen:
                        seen = True
                        first_chunk.append(time.monotonic() - began)
                    for event in decoder.feed(data):
                        if event.data == "[DONE]":
                            continue
                        chunk = json.loads(event.data)
                        for choice in chunk["choices"]:
                            text.append(choice["delta"].get("content") or "")
                            finish_reason = choice["finish_reason"] or finish_reason
                        if chunk.get("usage"):
                            tokens = chunk["usage"]["completion_tokens"]
            if finish_reason != "length" or not "".join(text):
                raise SystemExit(f"stream {index} ended with {finish_reason!r}")
            finished.append(time.monotonic() - began)
            return int(tokens)

        counts = await asyncio.gather(*(one(i) for i in range(concurrency)))
        elapsed = time.monotonic() - began
    # When the streams' first chunks and their ends came: a burst let in slowly ends ragged,
    # and the last streams then run in ever smaller batches.
    return {"output_tokens": sum(counts), "seconds": elapsed,
            "output_tokens_per_s": sum(counts) / elapsed,
            "first_chunk_s": [round(min(first_chunk), 3), round(max(first_chunk), 3)],
            "finished_s": [round(min(finished), 3), round(max(finished), 3)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=256,
                        help="tokens each stream generates in the measured round")
    parser.add_argument("--warmup-tokens", type=int, default=8,
                        help="tokens each stream generates in the unmeasured first round")
    parser.add_argument("--stream-interval", type=int, nargs="+", default=[1],
                        help="the servers' --stream-interval; with several, each is run")
    parser.add_argument("--client", choices=["openai", "sse"], nargs="+", default=["openai"],
                        help="the streams' reader: the openai SDK, or httpx with the client "
                             "package's SSE decoder and json (every chunk parsed either way)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the whole sequence of configurations this many times, "
                             "alternating (a loaded machine's drift then hits all of them)")
    parser.add_argument("--offline-reference", action="store_true",
                        help="also run N offline one-thread engines side by side for each N")
    parser.add_argument("--offline-worker", type=int, metavar="SEQUENCES",
                        help=argparse.SUPPRESS)  # internal: one engine of --offline-reference
    args = parser.parse_args()
    if args.offline_worker is not None:
        offline_worker(args.model, args.offline_worker, args.max_tokens)
        return
    results: dict[str, Any] = {"machine": machine_info(), "concurrency": args.concurrency,
                               "max_tokens": args.max_tokens, "runs": []}
    configurations = [(round_, interval, client, replicas) for round_ in range(args.repeat)
                      for interval in args.stream_interval for client in args.client
                      for replicas in args.replicas]
    for round_, interval, client_name, replicas in configurations:
        port = free_port()
        process, start_s = start(args.model, replicas, port, interval)
        try:
            idle_rss = tree_rss(process.pid)
            base_url = f"http://127.0.0.1:{port}"
            asyncio.run(streams(base_url, args.concurrency, args.warmup_tokens, client_name))
            # The benchmark's own client shares the machine's cores: its CPU is counted too.
            client = psutil.Process()
            cpu_before = {**tree_cpu(process.pid), client.pid: ("client", _cpu(client))}
            threads_before = replica_threads(process.pid)
            run = asyncio.run(streams(base_url, args.concurrency, args.max_tokens, client_name))
            threads_after = replica_threads(process.pid)
            cpu_after = {**tree_cpu(process.pid), client.pid: ("client", _cpu(client))}
            tokens = int(run["output_tokens"])
            results["runs"].append({
                "round": round_, "stream_interval": interval, "client": client_name,
                "replicas": replicas, "start_s": start_s, "idle_rss_bytes": idle_rss, **run,
                "cpu_ms_per_token": cpu_per_token(cpu_before, cpu_after, tokens),
                "replica_threads": engine_threads(threads_before, threads_after, tokens)})
        finally:
            process.terminate()
            process.wait(60)
        if args.offline_reference:
            # CPU ms per token of each engine's own tokens (a replica's own tokens are about
            # 1/N of all: compare with N times its per-token figures above).
            results["runs"][-1]["offline_reference_ms_per_own_token"] = offline_reference(
                args.model, replicas, args.concurrency, args.max_tokens)
    # Each run against the first replica count's run of its own round, interval and client.
    firsts: dict[tuple[int, int, str], float] = {}
    for run in results["runs"]:
        key = (run["round"], run["stream_interval"], run["client"])
        base = firsts.setdefault(key, run["output_tokens_per_s"])
        run["speedup"] = run["output_tokens_per_s"] / base
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
