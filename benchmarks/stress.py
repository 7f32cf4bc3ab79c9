"""The reliability suite (issue 11): each scenario against its own real `ziggurat-server`.

    python benchmarks/stress.py                          # every scenario but the soak
    python benchmarks/stress.py --scenario soak --duration 900
    python benchmarks/stress.py --scenario streams --streams 500 --model default

Prints one JSON object: per scenario its figures, `problems` (what went wrong, in words) and
`ok`; exits 1 when any scenario found a problem. The scenarios themselves live in
tests/server/stress_scenarios.py, where `make test` runs small versions of them.
Correctness only: no figure here is a timing to compare across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "server"), str(ROOT / "tests" / "core")]
import stress_scenarios as scenarios  # noqa: E402
from server_process import ServerProcess, clean_environment  # noqa: E402

SCENARIOS = ("streams", "kv", "auth", "sigterm", "soak")
API_KEY = "stress-key"


def model_path(choice: str, work_dir: Path) -> str:
    """`tiny`: a random-weight model built like the test fixtures; anything else is passed to
    --model as is (`default` is SmolLM2)."""
    if choice != "tiny":
        return choice
    from fixtures_models import make_tiny_llama

    return str(make_tiny_llama(work_dir / "tiny-model", arch="llama").gguf_path)


def start(work_dir: Path, model: str, *args: str, env: dict[str, str] | None = None
          ) -> ServerProcess:
    server = ServerProcess(work_dir / "logs", "--model", model, "--log-level", "warning", *args,
                           env=env)
    server.wait_ready()
    return server


def run_against(server: ServerProcess, scenario: Coroutine[Any, Any, scenarios.Report],
                stops_server: bool = False) -> dict[str, Any]:
    try:
        report = asyncio.run(scenario)
        alive = server.process.poll() is None
    finally:
        code = server.stop()
    result = report.as_dict()
    stderr = server.stderr_path.read_text(errors="replace")
    if "Traceback" in stderr:
        result["problems"].append(f"traceback in the server log: {server.stderr_path}")
    if not alive and not stops_server:
        result["problems"].append(f"the server died (exit {code})")
    result["ok"] = not result["problems"]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", nargs="+", choices=SCENARIOS,
                        default=[s for s in SCENARIOS if s != "soak"])
    parser.add_argument("--model", default="tiny",
                        help="tiny (random weights, built here), default (SmolLM2) or a path")
    parser.add_argument("--streams", type=int, default=500, help="streams at once (streams)")
    parser.add_argument("--cancel-fraction", type=float, default=0.2)
    parser.add_argument("--duration", type=float, default=900.0, help="soak seconds")
    parser.add_argument("--soak-concurrency", type=int, default=16)
    parser.add_argument("--shutdown-timeout", type=int, default=60, help="sigterm: seconds")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where the model and the server logs go (default: a temp dir)")
    args = parser.parse_args()

    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="ziggurat-stress-"))
    model = model_path(args.model, work_dir)
    results: dict[str, Any] = {"model": args.model, "work_dir": str(work_dir),
                               "load_average": psutil.getloadavg(),
                               "cpu_count": psutil.cpu_count()}
    runners: dict[str, Callable[[], dict[str, Any]]] = {}

    def streams() -> dict[str, Any]:
        server = start(work_dir, model, "--max-num-seqs", "64",
                       "--max-queue", str(args.streams))
        return run_against(server, scenarios.concurrent_streams(
            server.base_url, args.streams, args.cancel_fraction))

    def kv() -> dict[str, Any]:
        # 24 blocks of 16 tokens: room for two of the 192-token requests; 64 of them arrive.
        server = start(work_dir, model, "--num-kv-blocks", "24", "--max-model-len", "256",
                       "--max-num-seqs", "16", "--max-queue", "128")
        return run_against(server, scenarios.kv_exhaustion(server.base_url))

    def auth() -> dict[str, Any]:
        server = start(work_dir, model, env=clean_environment(ZIGGURAT_API_KEY=API_KEY))
        return run_against(server, scenarios.auth_sweep(server.base_url, API_KEY))

    def sigterm() -> dict[str, Any]:
        server = start(work_dir, model, "--max-num-seqs", "8",
                       "--shutdown-timeout", str(args.shutdown_timeout))
        return run_against(server, scenarios.sigterm_under_load(
            server.base_url, server.terminate, lambda: server.process.wait(
                args.shutdown_timeout + 30), num_streams=32), stops_server=True)

    def soak() -> dict[str, Any]:
        server = start(work_dir, model, "--max-num-seqs", "32")
        process = psutil.Process(server.process.pid)
        return run_against(server, scenarios.soak(
            server.base_url, args.duration, lambda: process.memory_info().rss,
            concurrency=args.soak_concurrency))

    runners.update(streams=streams, kv=kv, auth=auth, sigterm=sigterm, soak=soak)
    for name in args.scenario:
        results[name] = runners[name]()
        print(f"{name}: ok={results[name]['ok']}", file=sys.stderr, flush=True)
    results["load_average_after"] = psutil.getloadavg()
    print(json.dumps(results, indent=2))
    return 0 if all(results[name]["ok"] for name in args.scenario) else 1


if __name__ == "__main__":
    sys.exit(main())
