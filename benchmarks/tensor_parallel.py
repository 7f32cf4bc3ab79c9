"""Tensor-parallel decode throughput: the same greedy requests on 1 rank and on T ranks.

Prints one JSON object: for each tensor-parallel size, generated tokens/s over the whole run
(prefill included), with `--threads` torch threads per rank. Both runs use float32 linear layers
(tensor parallelism has no int8 path yet), so they compare like with like.

The default model (SmolLM2-135M: 9 query heads, 3 KV heads) splits across 3 ranks, not 2;
a Hugging Face folder with even head counts runs with --tp 2.

Usage: python benchmarks/tensor_parallel.py [--model default] [--tp 3] [--requests 8]
       [--max-tokens 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time

from machine import machine_info
from ziggurat_core.engine import InferenceEngine, SamplingParams
from ziggurat_core.engine.config import EngineConfig


def run(model: str, tp: int, requests: int, max_tokens: int, threads: int) -> dict[str, float]:
    config = EngineConfig(
        model=model, device="cpu", dtype="float32", quantization="none", num_threads=threads,
        tensor_parallel_size=tp,
    )
    engine = InferenceEngine(config)
    try:
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        for i in range(requests):
            engine.add_request(f"r{i}", f"Request {i}: tell me about the number {i}.", params)
        started = time.perf_counter()
        generated = sum(
            len(out.outputs[0].token_ids) for out in engine.get_outputs() if out.finished
        )
        seconds = time.perf_counter() - started
    finally:
        engine.close()
    return {"tensor_parallel_size": tp, "generated_tokens": generated, "seconds": seconds,
            "tokens_per_s": generated / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--tp", type=int, default=3)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    args = parser.parse_args()
    runs = [run(args.model, tp, args.requests, args.max_tokens, args.threads) for tp in (1, args.tp)]
    print(json.dumps({"machine": machine_info(), "threads_per_rank": args.threads, "runs": runs},
                     indent=2))


if __name__ == "__main__":
    main()
