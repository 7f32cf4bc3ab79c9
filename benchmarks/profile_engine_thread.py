"""Where the engine's stepping thread spends its time during N concurrent streams.

    python benchmarks/profile_engine_thread.py                    # SmolLM2, 32 streams
    python benchmarks/profile_engine_thread.py --model path.gguf --streams 32 --max-tokens 64

Runs an in-process AsyncEngine, profiles every `step()` with cProfile on the stepping thread
itself (cProfile sees only the thread it is enabled in), and prints JSON: the steps' total time
and the share of it spent turning tokens into text (detokenising), matching stop strings, and
in the output processor as a whole. Each stream asks for stop strings that never match, so the
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
from typing import Any

from ziggurat_core.engine.async_engine import AsyncEngine
from ziggurat_core.engine.config import EngineConfig
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
    args = parser.parse_args()

    engine = AsyncEngine.from_config(EngineConfig(model=args.model, max_num_seqs=args.streams))
    profile = cProfile.Profile()
    engine._submit(lambda: profiled_steps(engine, profile)).result()  # on the stepping thread
    try:
        tokens = asyncio.run(run_streams(engine, args.streams, args.max_tokens))
    finally:
        engine.shutdown()
    stats = pstats.Stats(profile)
    cumulative: dict[str, float] = dict.fromkeys(WATCHED.values(), 0.0)
    for (filename, _, name), row in stats.stats.items():  # type: ignore[attr-defined]
        for (suffix, function), label in WATCHED.items():
            if filename.endswith(suffix) and name == function:
                cumulative[label] += row[3]  # cumulative time
    total = cumulative["step"]
    print(json.dumps({
        "model": args.model, "streams": args.streams, "generated_tokens": tokens,
        "step_total_s": round(total, 3),
        "cumulative_s": {k: round(v, 4) for k, v in cumulative.items()},
        "share_of_step": {k: round(v / total, 4) for k, v in cumulative.items() if total},
        "note": "cProfile inflates Python-heavy code (per-call overhead) more than torch ops, "
                "so the detokenise/stop shares are upper bounds",
    }, indent=2))


if __name__ == "__main__":
    main()
