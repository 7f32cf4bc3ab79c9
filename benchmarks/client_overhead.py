"""Client overhead: Ziggurat's SDK against the official `openai` SDK on the same server, one run.

For tiny completions (max_tokens=1) it measures, per client:
  - sequential: one request at a time with the sync client -> p50 / p90 latency and requests/s
  - concurrent: `--concurrency` requests in flight with the async client -> requests/s
Rounds alternate between the two clients so drift on the server affects both alike; the median
round is reported. Retries are off for both so a hiccup is not hidden in one of them.

Servers:
  --base-url URL   a server that is already running (e.g. `make serve` -> http://127.0.0.1:8000)
  --start-server   start `ziggurat-server serve --model default` on a free port (the default)
  --stub           an in-process HTTP stub that answers instantly: isolates pure client cost

    python benchmarks/client_overhead.py --base-url http://127.0.0.1:8000
    python benchmarks/client_overhead.py --stub --requests 2000 --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass

import openai
import ziggurat

PROMPT = "Hi"
STUB_MODEL = "stub"


@dataclass
class Result:
    client: str
    mode: str
    requests: int
    requests_per_s: float
    p50_ms: float
    p90_ms: float


# -- servers --------------------------------------------------------------------------------


STUB_BODY = json.dumps(
    {
        "id": "cmpl-stub",
        "object": "text_completion",
        "created": 0,
        "model": STUB_MODEL,
        "choices": [{"index": 0, "text": " there", "finish_reason": "length"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
).encode()
STUB_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    + f"Content-Length: {len(STUB_BODY)}\r\n\r\n".encode()
    + STUB_BODY
)


async def _answer_stub_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            writer.write(STUB_RESPONSE)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


def _serve_stub(port: int) -> None:
    async def serve() -> None:
        server = await asyncio.start_server(_answer_stub_connection, "127.0.0.1", port)
        await server.serve_forever()

    asyncio.run(serve())


class StubServer(AbstractContextManager[str]):
    """A keep-alive HTTP/1.1 server answering every request with one completion body.

    It runs in its own process: on a thread of this one it would compete for the GIL with the
    clients being measured.
    """

    def __init__(self) -> None:
        self.port = _free_port()
        self.process = multiprocessing.Process(target=_serve_stub, args=(self.port,), daemon=True)

    def __enter__(self) -> str:
        self.process.start()
        deadline = time.monotonic() + 30.0
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1.0).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("the stub server did not start") from None
                time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc_info: object) -> None:
        self.process.terminate()
        self.process.join()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def started_server(model: str, timeout_s: float) -> Iterator[str]:
    port = _free_port()
    command = [
        sys.executable, "-m", "ziggurat_server.cli", "serve",
        "--model", model, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    environment = {k: v for k, v in os.environ.items() if not k.startswith("ZIGGURAT_")}
    process = subprocess.Popen(command, env=environment)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        with ziggurat.Client(base_url=base_url, max_retries=0, timeout=2.0) as probe:
            while True:
                if process.poll() is not None:
                    raise SystemExit(f"ziggurat-server exited with {process.returncode}")
                if time.monotonic() > deadline:
                    raise SystemExit(f"ziggurat-server not healthy after {timeout_s}s")
                try:
                    if probe.health().status == "ok":
                        break
                except ziggurat.APIConnectionError:
                    pass
                time.sleep(0.25)
        yield base_url
    finally:
        process.terminate()
        process.wait(timeout=60)


# -- measurements ---------------------------------------------------------------------------


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def measure_sequential(call: Callable[[], object], requests: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        call()
    latencies = []
    for _ in range(requests):
        started = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - started)
    return latencies


async def measure_concurrent(
    call: Callable[[], Awaitable[object]], requests: int, concurrency: int, warmup: int
) -> tuple[float, list[float]]:
    await asyncio.gather(*(call() for _ in range(warmup)))
    remaining = requests
    latencies: list[float] = []

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies


def sequential_round(name: str, base_url: str, model: str, args: argparse.Namespace) -> Result:
    if name == "ziggurat":
        ours = ziggurat.Client(base_url=base_url, max_retries=0, timeout=120.0)

        def call() -> object:
            return ours.completions.create(model, PROMPT, max_tokens=args.max_tokens)

        close: Callable[[], None] = ours.close
    else:
        theirs = openai.OpenAI(
            base_url=f"{base_url}/v1", api_key=args.api_key, max_retries=0, timeout=120.0
        )

        def call() -> object:
            return theirs.completions.create(model=model, prompt=PROMPT, max_tokens=args.max_tokens)

        close = theirs.close
    try:
        started = time.perf_counter()
        latencies = measure_sequential(call, args.requests, args.warmup)
        elapsed = time.perf_counter() - started
    finally:
        close()
    total = args.requests + args.warmup
    return Result(
        name,
        "sequential",
        args.requests,
        total / elapsed,
        _percentile(latencies, 0.5) * 1000,
        _percentile(latencies, 0.9) * 1000,
    )


async def concurrent_round(
    name: str, base_url: str, model: str, args: argparse.Namespace
) -> Result:
    if name == "ziggurat":
        ours = ziggurat.AsyncClient(base_url=base_url, max_retries=0, timeout=300.0)

        async def call() -> object:
            return await ours.completions.create(model, PROMPT, max_tokens=args.max_tokens)

        close: Callable[[], Awaitable[None]] = ours.close
    else:
        theirs = openai.AsyncOpenAI(
            base_url=f"{base_url}/v1", api_key=args.api_key, max_retries=0, timeout=300.0
        )

        async def call() -> object:
            return await theirs.completions.create(
                model=model, prompt=PROMPT, max_tokens=args.max_tokens
            )

        close = theirs.close
    try:
        elapsed, latencies = await measure_concurrent(
            call, args.requests, args.concurrency, args.warmup
        )
    finally:
        await close()
    return Result(
        name,
        f"concurrent x{args.concurrency}",
        args.requests,
        args.requests / elapsed,
        _percentile(latencies, 0.5) * 1000,
        _percentile(latencies, 0.9) * 1000,
    )


def median_result(results: list[Result]) -> Result:
    return sorted(results, key=lambda result: result.requests_per_s)[len(results) // 2]


def run_benchmark(base_url: str, args: argparse.Namespace) -> list[Result]:
    with ziggurat.Client(base_url=base_url, api_key=args.api_key) as client:
        model = args.model or client.models.list().data[0].id
    clients = ("ziggurat", "openai")
    sequential: dict[str, list[Result]] = {name: [] for name in clients}
    concurrent: dict[str, list[Result]] = {name: [] for name in clients}
    for round_index in range(args.rounds):
        order = clients if round_index % 2 == 0 else tuple(reversed(clients))
        for name in order:
            sequential[name].append(sequential_round(name, base_url, model, args))
            concurrent[name].append(asyncio.run(concurrent_round(name, base_url, model, args)))
    return [median_result(sequential[name]) for name in clients] + [
        median_result(concurrent[name]) for name in clients
    ]


def print_table(results: list[Result]) -> None:
    print(f"{'client':<10} {'mode':<16} {'requests':>8} {'req/s':>9} {'p50 ms':>8} {'p90 ms':>8}")
    for result in results:
        print(
            f"{result.client:<10} {result.mode:<16} {result.requests:>8} "
            f"{result.requests_per_s:>9.1f} {result.p50_ms:>8.2f} {result.p90_ms:>8.2f}"
        )
    by_mode: dict[str, dict[str, Result]] = {}
    for result in results:
        by_mode.setdefault(result.mode, {})[result.client] = result
    for mode, pair in by_mode.items():
        ratio = pair["ziggurat"].requests_per_s / pair["openai"].requests_per_s
        print(f"{mode}: ziggurat/openai throughput = {ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--base-url", help="a running server, e.g. http://127.0.0.1:8000")
    where.add_argument("--stub", action="store_true", help="an in-process stub server")
    where.add_argument(
        "--start-server", action="store_true", help="start ziggurat-server (default)"
    )
    parser.add_argument("--server-model", default="default", help="--model for --start-server")
    parser.add_argument("--model", help="model id to request (default: the server's first)")
    parser.add_argument("--api-key", default=os.environ.get("ZIGGURAT_API_KEY", "unused"))
    parser.add_argument("--requests", type=int, default=200, help="timed requests per round")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; median kept")
    parser.add_argument("--start-timeout", type=float, default=300.0)
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()

    if args.base_url:
        server: AbstractContextManager[str] = _existing(args.base_url)
    elif args.stub:
        server = StubServer()
        args.model = args.model or STUB_MODEL  # the stub answers every route with a completion
    else:
        server = started_server(args.server_model, args.start_timeout)
    with server as base_url:
        print(f"server: {base_url}  ziggurat {ziggurat.__version__}  openai {openai.__version__}")
        results = run_benchmark(base_url, args)
    print_table(results)
    if args.json:
        with open(args.json, "w") as output:
            json.dump([asdict(result) for result in results], output, indent=2)


@contextmanager
def _existing(base_url: str) -> Iterator[str]:
    yield base_url.rstrip("/").removesuffix("/v1")


if __name__ == "__main__":
    main()
