"""One command for the first GPU: is the CUDA path right, and how fast is it? Prints one JSON report.

On a machine without CUDA it says so (`"cuda": false`) and exits 0. With CUDA it:
  - loads the default model (and `--hf-folder`, a Hugging Face safetensors folder, if given) in
    bfloat16 on the first GPU, reporting load time, weights and the KV cache's memory profile;
  - checks greedy parity against the CPU float32 engine (float linear layers, no int8) on a set
    of prompts: a bfloat16 output may leave the reference only where the reference itself was
    close to a tie (the token the GPU took within `--tie-nats` of the one the CPU took, by the
    CPU's own log-probabilities); after that first differing token the contexts differ, so
    drift is allowed;
  - checks batch invariance (greedy alone against greedy in a batch, parting only at a near-tie
    as above: bfloat16 products round by batch shape) and seeded sampling (a seeded request
    samples the same tokens alone and in a batch of unseeded ones);
  - does all of that twice: with decode steps replayed as CUDA graphs (the default) and eagerly
    (`enforce_eager`), and checks the graph mode's greedy outputs against the eager mode's as
    above (`same_as_eager`);
  - checks the memory accounting: the device memory in use once loaded (weights, KV cache,
    graphs) and after the sweep stays within gpu_memory_utilization's share of the device (on a
    GPU nothing else uses), and the decode graphs took no more than the profile set aside for
    them (`cuda_graph_bytes` vs `cuda_graph_measured_bytes` in the memory profile);
  - runs the GPU tests (pytest tests/core/test_attention_xformers.py tests/core/test_cuda_graphs.py
    tests/core/test_sampler_device_path.py: xformers' kernels, the fixed-shape decode inputs,
    CUDA-graph capture and its memory, the sampler's sync-free path);
  - sweeps 1, 8, 64 and 256 concurrent streams in both modes: decode tokens/s, time to first
    token, and at batch 1 the memory bandwidth reached (weight bytes read per decode step / step
    time) as a fraction of the device's peak.

The exit status is 1 where a correctness check failed, else 0.

A check that raises is recorded in the report (`error`, with its traceback) and fails it; the
other checks still run, and with `--output` the report so far is written after every mode, so a
first GPU run that breaks half-way still says what worked.

Usage: python benchmarks/gpu_check.py [--model default|PATH] [--hf-folder PATH] [--max-tokens 32]
       [--tie-nats 0.25] [--streams 1,8,64,256] [--skip-pytest] [--output report.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from gpu_judgements import (
    bandwidth_fraction,
    judge_greedy_parity,
    judge_memory,
    peak_bandwidth,
)
from machine import machine_info

PARITY_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three primary colours are",
    "Water boils at a temperature of",
    "List three uses of a paperclip:",
    "In 1969, the first humans",
    "The quick brown fox",
]


def no_cuda_report(reason: str) -> dict[str, Any]:
    return {"cuda": False, "reason": reason, "checks": {}, "passed": None}


# ---------------------------------------------------------------------- the checks (CUDA only)
def _llm(model: str, **settings: Any) -> Any:
    from ziggurat_core.engine import LLM

    return LLM(model=model, **settings)


def _greedy(llm: Any, prompts: list[str], max_tokens: int, logprobs: int | None = None) -> list[Any]:
    from ziggurat_core.engine import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, logprobs=logprobs)
    return [out.outputs[0] for out in llm.generate(prompts, params, use_tqdm=False)]


def check_parity(reference: list[Any], candidate: list[Any], tie_nats: float) -> dict[str, Any]:
    """Greedy outputs `candidate` against `reference` (asked with logprobs=5), per prompt."""
    prompts = []
    for prompt, ref, cand in zip(PARITY_PROMPTS, reference, candidate, strict=True):
        tops = [
            {top.token_id: top.logprob for top in step.top_logprobs} | {step.token_id: step.logprob}
            for step in ref.logprobs or []
        ]
        verdict = judge_greedy_parity(ref.token_ids, cand.token_ids, tops, tie_nats)
        prompts.append({"prompt": prompt, **verdict})
    return {"passed": all(p["passed"] for p in prompts), "tie_nats": tie_nats, "prompts": prompts}


def check_batch_invariance(gpu: Any, max_tokens: int, tie_nats: float) -> dict[str, Any]:
    """Greedy alone against greedy in a batch, judged like parity with the lone run as the
    reference: bfloat16 matrix products may round differently at another batch size (cuBLAS
    picks its kernel by shape), so the two may part only at a near-tie; a batch that leaked
    between sequences would part early and far from one."""
    together = _greedy(gpu, PARITY_PROMPTS, max_tokens)
    alone = [_greedy(gpu, [p], max_tokens, logprobs=5)[0] for p in PARITY_PROMPTS]
    verdict = check_parity(alone, together, tie_nats)
    verdict["identical"] = sum(bool(p["identical"]) for p in verdict["prompts"])
    return verdict


def check_seeded_sampling(gpu: Any, max_tokens: int) -> dict[str, Any]:
    from ziggurat_core.engine import SamplingParams

    seeded = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=max_tokens, seed=1234, ignore_eos=True)
    noise = SamplingParams(temperature=1.0, max_tokens=max_tokens, ignore_eos=True)
    prompt = "Tell me a story about a dragon."
    alone = gpu.generate([prompt], seeded, use_tqdm=False)[0].outputs[0].token_ids
    batch = gpu.generate(["Hello there", prompt, "What is 2+2?"], [noise, seeded, noise], use_tqdm=False)
    return {"passed": batch[1].outputs[0].token_ids == alone}


GPU_TEST_FILES = [
    "tests/core/test_attention_xformers.py",
    "tests/core/test_cuda_graphs.py",
    "tests/core/test_sampler_device_path.py",
]


def xformers_reason(device: torch.device) -> str | None:
    from ziggurat_core.engine.attention.xformers_backend import xformers_unavailable_reason

    return xformers_unavailable_reason(device, torch.bfloat16)


def device_used_bytes(device: torch.device) -> int:
    free, total = torch.cuda.mem_get_info(device)
    return int(total - free)


def run_gpu_tests() -> dict[str, Any]:
    """The tests that skip without a GPU: xformers' kernels and CUDA-graph capture."""
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *GPU_TEST_FILES, "-q", "-rs"],
        cwd=root, capture_output=True, text=True, timeout=1800,
    )
    lines = done.stdout.strip().splitlines()
    return {"passed": done.returncode == 0, "returncode": done.returncode, "summary": lines[-1] if lines else "",
            "output_tail": (done.stdout + done.stderr)[-4000:] if done.returncode else ""}


def throughput_sweep(gpu: Any, streams: list[int], max_tokens: int, weight_bytes: int, peak: float | None) -> list[dict[str, Any]]:
    from ziggurat_core.engine import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    rows = []
    for count in streams:
        prompts = [f"Request {i}: write a short paragraph about {PARITY_PROMPTS[i % len(PARITY_PROMPTS)]}" for i in range(count)]
        started = time.perf_counter()
        outputs = gpu.generate(prompts, params, use_tqdm=False)
        elapsed = time.perf_counter() - started
        ttfts = sorted(t for o in outputs if (t := o.time_to_first_token) is not None)
        decode = [o.metrics.finished_time - o.metrics.first_token_time for o in outputs
                  if o.metrics and o.metrics.finished_time and o.metrics.first_token_time]
        decode_window = max(decode) if decode else 0.0
        tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
        row: dict[str, Any] = {
            "streams": count,
            "output_tokens": tokens,
            "wall_s": elapsed,
            "decode_tokens_per_s": (tokens - len(outputs)) / decode_window if decode_window else None,
            "ttft_median_s": ttfts[len(ttfts) // 2] if ttfts else None,
            "ttft_max_s": ttfts[-1] if ttfts else None,
        }
        if count == 1 and decode_window and max_tokens > 1:
            step = decode_window / (max_tokens - 1)
            row["decode_step_s"] = step
            row["bandwidth_fraction"] = bandwidth_fraction(weight_bytes, step, peak)
        rows.append(row)
    return rows


def progress(message: str) -> None:
    """A progress line on stderr: stdout carries only the JSON report."""
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def save(report: dict[str, Any], output: str | None) -> None:
    if output:
        Path(output).write_text(json.dumps(report, indent=2, default=str))


def error_entry(exc: BaseException) -> dict[str, Any]:
    """What a check that raised leaves in the report: it fails, and says why."""
    return {"passed": False, "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(limit=12)}


def check_mode(model: str, enforce_eager: bool, reference: list[Any], eager_reference: list[Any],
               args: argparse.Namespace, device: torch.device, peak: float | None) -> tuple[dict[str, Any], list[Any]]:
    """Load `model` on the GPU in one mode and run every check and the sweep on it. Returns the
    mode's report and its greedy outputs (the eager ones are the graph mode's reference)."""
    streams = [int(s) for s in args.streams.split(",")]
    started = time.perf_counter()
    gpu = _llm(model, device="cuda:0", dtype="bfloat16", max_num_seqs=max(streams),
               enforce_eager=enforce_eager)
    load_s = time.perf_counter() - started
    progress(f"loaded in {load_s:.1f} s")
    runner = gpu.engine.runner
    weight_bytes = sum(p.numel() * p.element_size() for p in runner.model.parameters())
    resolved = gpu.engine.resolved_settings
    graphs = getattr(runner, "decode_graphs", None)
    captured = graphs is not None and graphs.captured
    profile = None if resolved.memory_profile is None else asdict(resolved.memory_profile)
    mode: dict[str, Any] = {
        "load_s": load_s,
        "weight_bytes": weight_bytes,
        "attention_backend": resolved.attention_backend,
        "block_size": gpu.engine.config.block_size,
        "decode_graph_sizes": None if graphs is None else graphs.sizes,
        "decode_graphs_captured": captured,
        "memory_profile": profile,
    }
    checks: dict[str, Any] = {"memory_at_load": judge_memory(profile, device_used_bytes(device), captured)}
    mode["checks"] = checks
    outputs: list[Any] = []
    try:
        outputs = _greedy(gpu, PARITY_PROMPTS, args.max_tokens, logprobs=5)
        checks["greedy_parity"] = check_parity(reference, outputs, args.tie_nats)
    except Exception as exc:
        checks["greedy_parity"] = error_entry(exc)
    named_checks = [
        ("batch_invariance", lambda: check_batch_invariance(gpu, args.max_tokens, args.tie_nats)),
        ("seeded_sampling", lambda: check_seeded_sampling(gpu, args.max_tokens)),
    ]
    if not enforce_eager:
        named_checks.append(("same_as_eager", lambda: check_parity(eager_reference, outputs, args.tie_nats)))
        # The runner falls back to eager steps (with a warning) where capture fails.
        checks["graphs_captured"] = {"passed": captured}
    for name, check in named_checks:
        progress(f"check {name}")
        try:
            checks[name] = check()
        except Exception as exc:
            checks[name] = error_entry(exc)
    progress("throughput sweep")
    try:
        mode["throughput"] = throughput_sweep(gpu, streams, args.max_tokens, weight_bytes, peak)
    except Exception as exc:
        mode["throughput"] = error_entry(exc)
        checks["throughput_sweep"] = mode["throughput"]
    # The sweep's largest batches and prefills ran: still within the share?
    checks["memory_after_sweep"] = judge_memory(profile, device_used_bytes(device), captured)
    gpu.close()
    return mode, outputs


def run_on_gpu(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device("cuda", 0)
    props = torch.cuda.get_device_properties(device)
    peak, peak_source = peak_bandwidth(
        props.name, getattr(props, "memory_clock_rate", None), getattr(props, "memory_bus_width", None)
    )
    report: dict[str, Any] = {
        "cuda": True,
        "device": {"name": props.name, "total_memory": props.total_memory,
                   "compute_capability": f"{props.major}.{props.minor}",
                   "peak_bandwidth_bytes_per_s": peak, "peak_bandwidth_source": peak_source},
        "torch": torch.__version__,
        # Why the engine's attention falls back to torch here, or None where xformers runs.
        "xformers_unavailable": xformers_reason(device),
        "machine": machine_info(),
        "models": {},
    }
    models = [args.model] + ([args.hf_folder] if args.hf_folder else [])
    for model in models:
        modes: dict[str, Any] = {}
        report["models"][model] = modes
        progress(f"{model}: CPU float32 reference")
        try:
            cpu = _llm(model, device="cpu", dtype="float32", quantization="none")
            reference = _greedy(cpu, PARITY_PROMPTS, args.max_tokens, logprobs=5)
            del cpu
        except Exception as exc:
            modes["cpu_reference"] = {"checks": {"cpu_reference": error_entry(exc)}}
            save(report, args.output)
            continue
        eager_reference: list[Any] = []
        # Eager first: the graph mode's greedy outputs are judged against its log-probabilities.
        for mode, enforce_eager in (("eager", True), ("cuda_graphs", False)):
            progress(f"{model}: {mode}")
            try:
                modes[mode], outputs = check_mode(model, enforce_eager, reference, eager_reference,
                                                  args, device, peak)
            except Exception as exc:
                modes[mode], outputs = {"checks": {"load": error_entry(exc)}}, []
            gc.collect()  # the mode's engine is gone with check_mode's frame, cycles too
            torch.cuda.empty_cache()
            if enforce_eager:
                eager_reference = outputs
            save(report, args.output)
    if not args.skip_pytest:
        progress("GPU tests")
        report["gpu_tests"] = run_gpu_tests()
    verdicts = [c["passed"] for modes in report["models"].values() for m in modes.values()
                for c in m["checks"].values()]
    if "gpu_tests" in report:
        verdicts.append(report["gpu_tests"]["passed"])
    report["passed"] = all(verdicts)
    save(report, args.output)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default",
                        help="the model checked first: 'default' (SmolLM2) or a .gguf / HF folder")
    parser.add_argument("--hf-folder", help="a Hugging Face safetensors folder to check too")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--tie-nats", type=float, default=0.25,
                        help="how close to a tie the first differing token must be in the reference")
    parser.add_argument("--streams", default="1,8,64,256")
    parser.add_argument("--skip-pytest", action="store_true",
                        help="do not run the GPU tests (xformers kernels, CUDA-graph capture)")
    parser.add_argument("--output", help="also write the report here, after every mode")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(json.dumps(no_cuda_report(f"torch {torch.__version__} sees no CUDA device"), indent=2))
        return 0
    report = run_on_gpu(args)
    print(json.dumps(report, indent=2, default=str))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
