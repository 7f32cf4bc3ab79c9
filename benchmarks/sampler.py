"""The CPU sampler with its C kernels (greedy argmax, temperature, top-k / top-p sampling) against
its torch path.

Times `Sampler.__call__` on random float32 logits of the default model's vocabulary (49,152) for
each row count, with every row in one mode: greedy (temperature 0); temperature 1 with no top-k
/ top-p (the OpenAI default); temperature 0.7 with top_p 0.9; temperature 0.7 with top_k 40
(what chat UIs and llama.cpp send): what one engine step spends turning logits into tokens.
The logits are `randn * 3` by default, whose nucleus is wider (the top-p kernel gathers about
140 candidates a row at top_p 0.9 and temperature 0.7) than a real model's usually is: the hard
case for top-p, where the most candidates are gathered and sorted. `--logit-scale 12` gives peaked rows instead, as a model's are at a low
temperature: a few tokens hold the mass, and the weights of most of the vocabulary are tiny or
underflow to zero.
The torch path runs in a child process with ZIGGURAT_CPU_KERNELS=0, the kernel path in another,
alternated `--rounds` times, so both see the same machine; one thread each (`--threads`), as a
replica's engine runs. Prints one JSON object with the machine, the milliseconds per call of
each path (the median of each round's mean) and their ratio.

Usage: python benchmarks/sampler.py [--rows 1 16 32 64] [--rounds 3] [--seconds 0.5]
       [--logit-scale 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

VOCAB = 49152
EOS = 2
# Mode -> the SamplingParams keywords of every row.
MODES: dict[str, dict[str, Any]] = {
    "greedy": {"temperature": 0.0},
    "temperature_1": {"temperature": 1.0},
    "top_p_0.9": {"temperature": 0.7, "top_p": 0.9},
    "top_k_40": {"temperature": 0.7, "top_k": 40},
}


def measure(rows: list[int], seconds: float, threads: int, logit_scale: float
            ) -> dict[str, dict[str, float]]:
    """Milliseconds per sampler call for each (mode, rows), in this process."""
    import torch
    from ziggurat_core.engine.sampler import Sampler
    from ziggurat_core.engine.sampling_params import SamplingParams
    from ziggurat_core.engine.sequence import SequenceState

    torch.set_num_threads(threads)
    sampler = Sampler(VOCAB, torch.device("cpu"), seed=0)
    generator = torch.Generator().manual_seed(0)
    results: dict[str, dict[str, float]] = {}
    for mode, settings in MODES.items():
        results[mode] = {}
        params = SamplingParams(**settings)
        for count in rows:
            seqs = [SequenceState(f"r{i}", [0], params, index=0) for i in range(count)]
            logits = torch.randn(count, VOCAB, generator=generator) * logit_scale
            sampler(logits, seqs, [EOS])  # warm-up: kernels loaded, buffers allocated
            calls, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                sampler(logits, seqs, [EOS])
                calls += 1
            results[mode][str(count)] = (time.perf_counter() - started) / calls * 1000
    return results


def run_child(kernels: bool, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    env = {**os.environ, "ZIGGURAT_CPU_KERNELS": "1" if kernels else "0"}
    command = [sys.executable, __file__, "--child", "--rows", *map(str, args.rows),
               "--seconds", str(args.seconds), "--threads", str(args.threads),
               "--logit-scale", str(args.logit_scale)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return dict(json.loads(done.stdout))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 16, 32, 64])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=0.5, help="timed per configuration")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--logit-scale", type=float, default=3.0,
                        help="the logits are randn times this (12: peaked rows)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.rows, args.seconds, args.threads, args.logit_scale)))
        return 0
    from machine import machine_info

    rounds: dict[str, list[dict[str, dict[str, float]]]] = {"torch": [], "kernel": []}
    for _ in range(args.rounds):
        rounds["torch"].append(run_child(False, args))
        rounds["kernel"].append(run_child(True, args))
    report: dict[str, Any] = {"benchmark": "sampler", "machine": machine_info(),
                              "vocab": VOCAB, "threads": args.threads, "rounds": args.rounds,
                              "logit_scale": args.logit_scale}
    for mode in MODES:
        table = {}
        for count in map(str, args.rows):
            torch_ms = statistics.median(r[mode][count] for r in rounds["torch"])
            kernel_ms = statistics.median(r[mode][count] for r in rounds["kernel"])
            table[count] = {"torch_ms": round(torch_ms, 3), "kernel_ms": round(kernel_ms, 3),
                            "speedup": round(torch_ms / kernel_ms, 2)}
        report[mode] = table
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
