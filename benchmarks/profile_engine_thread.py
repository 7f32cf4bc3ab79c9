"""Where the engine's stepping thread spends its time during N concurrent streams.

    python benchmarks/profile_engine_thread.py                    # SmolLM2, 32 streams
    python benchmarks/profile_engine_thread.py --model path.gguf --streams 32 --max-tokens 64
    python benchmarks/profile_engine_thread.py --method timers   # wall-clock timers instead

Runs an in-process AsyncEngine and prints JSON: the steps' total time and the share of it spent
turning tokens into text (detokenising), matching stop strings, and in the output processor as
a whole. `--method profile` (the default) profiles every `step()` with cProfile on the stepping
thread itself (cProfile sees only the thread it is enabled in); its per-call overhead inflates
the Python parts. `--method timers` wraps only the watched functions with a clock, which costs
a fraction of a microsecond a call, so its shares are closer to what the thread really spends. Each stream asks for stop strings that never match, so the
matcher does its full work on every token. The question it answers: would moving
detokenising and stop matching off the stepping thread give the model back a noticeable share?
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import random
import time
from collections.abc import Callable
from typing import Any

from ziggurat_core.engine.async_engine import AsyncEngine
from ziggurat_core.engine.config import EngineConfig
from ziggurat_core.engine.detokenizer import IncrementalDetokenizer, StopStringMatcher
from ziggurat_core.engine.llm_engine import InferenceEngine
from ziggurat_core.engine.model_runner import ModelRunner
from ziggurat_core.engine.output_processor import OutputProcessor
from ziggurat_core.engine.sampling_params import SamplingParams

# (file suffix, function name) -> the label reported
WATCHED = {
    ("llm_engine.py", "step"): "step",
    ("detokenizer.py", "push"): "detokenize_push",
    ("detokenizer.py", "flush"): "detokenize_or_stop_flush",
    ("detokenizer.py", "feed"): "stop_string_match",
    ("output_processor.py", "process_token"): "output_processor_process_token",
    ("output_processor.py", "make_output"): "output_processor_make_output",
    ("model_runner.py", "execute"): "model_runner_execute",
}


# The same functions as WATCHED, as (owner class, method name) -> label, for `--method timers`.
TIMED: dict[tuple[type, str], str] = {
    (InferenceEngine, "step"): "step",
    (IncrementalDetokenizer, "push"): "detokenize_push",
    (StopStringMatcher, "feed"): "stop_string_match",
    (OutputProcessor, "process_token"): "output_processor_process_token",
    (OutputProcessor, "make_output"): "output_processor_make_output",
    (ModelRunner, "execute"): "model_runner_execute",
}


def timed_methods(totals: dict[str, float]) -> None:
    """Wrap each TIMED method with a clock that adds its wall time to `totals[label]`. Every
    one of them runs on the stepping thread only, so a plain dict is enough."""
    for (owner, name), label in TIMED.items():
        inner = getattr(owner, name)
        is_static = isinstance(owner.__dict__[name], staticmethod)

        def timed(*args: Any, _inner: Callable[..., Any] = inner, _label: str = label,
                  **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return _inner(*args, **kwargs)
            finally:
                totals[_label] += time.perf_counter() - started

        setattr(owner, name, staticmethod(timed) if is_static else timed)


def profiled_steps(engine: AsyncEngine, profile: cProfile.Profile) -> None:
    inner = engine.engine
    step = inner.step

    def step_under_profile() -> Any:
        profile.enable()
        try:
            return step()
        finally:
            profile.disable()

    inner.step = step_under_profile  # type: ignore[method-assign]


async def run_streams(engine: AsyncEngine, streams: int, max_tokens: int) -> int:
    draw = random.Random(0)
    words = ["river", "lamp", "orbit", "garden", "signal", "harbor", "copper", "meadow"]

    async def one(index: int) -> int:
        prompt = "Write about " + " ".join(draw.choice(words) for _ in range(12))
        params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0.8,
                                seed=index, stop=["NEVER-STOP-1", "###never###"])
        tokens = 0
        async for output in engine.generate(f"req-{index}", prompt=prompt,
                                            sampling_params=params):
            tokens = len(output.outputs[0].token_ids)
        return tokens

    return sum(await asyncio.gather(*(one(i) for i in range(streams))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--method", choices=("profile", "timers"), default="profile")
    args = parser.parse_args()

    cumulative: dict[str, float] = dict.fromkeys(WATCHED.values(), 0.0)
    if args.method == "timers":
        del cumulative["detokenize_or_stop_flush"]  # shared by both classes; not timed apart
        timed_methods(cumulative)
    engine = AsyncEngine.from_config(EngineConfig(model=args.model, max_num_seqs=args.streams))
    profile = cProfile.Profile()
    if args.method == "profile":
        engine._submit(lambda: profiled_steps(engine, profile)).result()  # on the stepping thread
    try:
        # One untimed request first: lazy initialisation is not a step's steady cost.
        asyncio.run(run_streams(engine, 1, 2))
        cumulative.update(dict.fromkeys(cumulative, 0.0))
        if args.method == "profile":
            profile.clear()
        tokens = asyncio.run(run_streams(engine, args.streams, args.max_tokens))
    finally:
        engine.shutdown()
    if args.method == "profile":
        stats = pstats.Stats(profile)
        for (filename, _, name), row in stats.stats.items():  # type: ignore[attr-defined]
            for (suffix, function), label in WATCHED.items():
                if filename.endswith(suffix) and name == function:
                    cumulative[label] += row[3]  # cumulative time
    total = cumulative["step"]
    print(json.dumps({
        "model": args.model, "method": args.method, "streams": args.streams,
        "generated_tokens": tokens,
        "step_total_s": round(total, 3),
        "cumulative_s": {k: round(v, 4) for k, v in cumulative.items()},
        "share_of_step": {k: round(v / total, 4) for k, v in cumulative.items() if total},
        "note": "cProfile inflates Python-heavy code (per-call overhead) more than torch ops, "
                "so its detokenise/stop shares are upper bounds" if args.method == "profile"
        else "wall-clock timers around the watched functions only",
    }, indent=2))


if __name__ == "__main__":
    main()
