"""Decode rate of a batch with every row constrained by a JSON schema vs the same batch
unconstrained, in one run (the issue's target: >= 0.9x).

Prints one JSON object. Both batches are the same chat prompts submitted at once with the same
max_tokens and ignore_eos (a constrained row still ends when its grammar is complete, which
forbids EOS only while the grammar allows more). The decode rate counts only full-batch decode
steps (every sequence running and past its prompt), so neither prefill nor a shrinking tail
weighs on the ratio; a forced run of tokens counts all its tokens in the step that computes them.

The two batches alternate `--repeats` times and each keeps its best decode rate, so a burst of
load from elsewhere on a shared machine weighs on neither side more than the other.

Usage: python benchmarks/structured_output.py [--model default] [--requests 32] [--max-tokens 64]
       [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from machine import machine_info
from ziggurat_core.engine import InferenceEngine, SamplingParams, StructuredOutputsParams

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "year": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "story": {"type": "string"},
    },
    "required": ["title", "year", "tags", "story"],
}


def run_batch(engine: InferenceEngine, prompts: list[list[dict[str, str]]],
              params: SamplingParams, label: str) -> dict[str, Any]:
    for i, messages in enumerate(prompts):
        engine.add_request(f"{label}-{i}", sampling_params=params, messages=messages)
    decode_tokens = decode_seconds = 0.0
    total_tokens, finish_reasons, outputs = 0, {}, {}
    started = time.perf_counter()
    while engine.has_unfinished_requests():
        step_start = time.perf_counter()
        step_outputs = engine.step()
        elapsed = time.perf_counter() - step_start
        gained = sum(len(o.outputs[0].delta_token_ids) for o in step_outputs)
        total_tokens += gained
        # Every request gained tokens and had some before: a decode step of the whole batch.
        full_batch = len(step_outputs) == len(prompts) and all(
            len(o.outputs[0].token_ids) > len(o.outputs[0].delta_token_ids) for o in step_outputs)
        if full_batch:
            decode_tokens += gained
            decode_seconds += elapsed
        for output in step_outputs:
            if output.finished:
                completion = output.outputs[0]
                finish_reasons[completion.finish_reason] = finish_reasons.get(completion.finish_reason, 0) + 1
                outputs[output.request_id] = completion.text
    wall = time.perf_counter() - started
    return {
        "decode_tokens_per_s": decode_tokens / decode_seconds if decode_seconds else None,
        "decode_steps_tokens": int(decode_tokens),
        "total_tokens": total_tokens,
        "wall_s": round(wall, 3),
        "finish_reasons": finish_reasons,
        "outputs": outputs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    engine = InferenceEngine(model=args.model, max_num_seqs=max(args.requests, 1))
    prompts = [[{"role": "user", "content": f"Write story number {i} about a lighthouse keeper "
                                            "as JSON with a title, year, tags and the story."}]
               for i in range(args.requests)]
    common = dict(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
    # Warm-up: the first constrained request builds llguidance's tokenizer and the schema.
    engine.add_request("warmup", prompts[0][0]["content"], SamplingParams(
        max_tokens=2, structured_outputs=StructuredOutputsParams(json=SCHEMA)))
    list(engine.get_outputs())

    plain_params = SamplingParams(**common)
    json_params = SamplingParams(**common, structured_outputs=StructuredOutputsParams(json=SCHEMA))
    plain_runs, json_runs = [], []
    for repeat in range(args.repeats):
        plain_runs.append(run_batch(engine, prompts, plain_params, f"plain{repeat}"))
        json_runs.append(run_batch(engine, prompts, json_params, f"json{repeat}"))

    def best(runs: list[dict[str, Any]]) -> dict[str, Any]:
        return max(runs, key=lambda run: run["decode_tokens_per_s"] or 0.0)

    plain, constrained = best(plain_runs), best(json_runs)
    valid = 0
    for text in constrained["outputs"].values():
        try:
            json.loads(text)
            valid += 1
        except json.JSONDecodeError:
            pass  # cut by max_tokens: a prefix of a document
    ratio = None
    if plain["decode_tokens_per_s"] and constrained["decode_tokens_per_s"]:
        ratio = constrained["decode_tokens_per_s"] / plain["decode_tokens_per_s"]
    sample = next(iter(constrained["outputs"].values()), "")
    for result in (plain, constrained):
        del result["outputs"]
    print(json.dumps({
        "model": engine.model_name,
        "requests": args.requests,
        "max_tokens": args.max_tokens,
        "repeats": args.repeats,
        "unconstrained": plain,
        "json_schema": {**constrained, "complete_documents": valid, "sample_output": sample},
        "constrained_over_unconstrained_decode_rate": ratio,
        "machine": machine_info(),
    }, indent=2))


if __name__ == "__main__":
    main()
