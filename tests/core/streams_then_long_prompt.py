"""The set-up the engine tests of the prefill cap and the prefill pacer share: four greedy streams
decode alone for a few steps, then a long prompt arrives beside them."""

from __future__ import annotations

from ziggurat_core.engine import InferenceEngine, SamplingParams


def streams_then_long_prompt(engine: InferenceEngine, vocab: int, *, stream_tokens: int,
                             decode_steps: int, long_tokens: int) -> None:
    """Adds streams s0-s3 (5-token prompts, `stream_tokens` tokens each), runs `decode_steps`
    steps, then adds "long" (`long_tokens` prompt tokens, 4 output tokens)."""
    params = SamplingParams(temperature=0.0, max_tokens=stream_tokens, ignore_eos=True)
    for i in range(4):
        engine.add_request(f"s{i}", prompt_token_ids=[(7 * i + j) % vocab for j in range(5)],
                           sampling_params=params)
    for _ in range(decode_steps):
        engine.step()
    engine.add_request("long", prompt_token_ids=[(13 * j + 5) % vocab for j in range(long_tokens)],
                       sampling_params=SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True))
