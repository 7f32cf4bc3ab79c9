"""The prefill cap beside decodes in a real engine (tiny random model): a long prompt spread
over many small chunks next to decoding streams gives every request the same greedy tokens as
the uncapped engine, which prefills it in one step; and an unset cap is on for a streaming
engine (the server's) on CPU only."""

from __future__ import annotations

from fixtures_models import TinyModel
from streams_then_long_prompt import streams_then_long_prompt
from ziggurat_core.engine import InferenceEngine
from ziggurat_core.engine.async_engine import AsyncEngine
from ziggurat_core.engine.config import DEFAULT_CPU_PREFILL_TOKENS_WHILE_DECODING, EngineConfig


def run(tiny: TinyModel, cap: int | None) -> tuple[dict[str, list[int]], int, InferenceEngine]:
    engine = InferenceEngine(EngineConfig(model=str(tiny.gguf_path), num_kv_blocks=64,
                                          max_prefill_tokens_while_decoding=cap))
    # the streams are decoding when the long prompt arrives
    streams_then_long_prompt(engine, tiny.config.vocab_size, stream_tokens=40, decode_steps=3,
                             long_tokens=180)
    steps_before = engine.counters["steps"]
    tokens: dict[str, list[int]] = {}
    long_done_at = None
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.finished:
                tokens[output.request_id] = output.outputs[0].token_ids
                if output.request_id == "long":
                    long_done_at = engine.counters["steps"] - steps_before
    assert long_done_at is not None
    return tokens, long_done_at, engine


def test_capped_prefill_gives_the_same_tokens_as_one_big_chunk(tiny_llama: TinyModel) -> None:
    uncapped, uncapped_steps, _ = run(tiny_llama, 0)
    capped, capped_steps, engine = run(tiny_llama, 8)
    assert capped == uncapped
    assert len(capped) == 5
    assert engine.config.max_prefill_tokens_while_decoding == 8
    # 180 prompt tokens at most 8 a step (fewer deeper in): spread over more than 22 steps,
    # where the uncapped engine took the whole prompt in its first step.
    assert uncapped_steps == 4
    assert capped_steps > 180 // 8 + 3


def test_an_unset_cap_is_on_for_a_streaming_engine_only(tiny_llama: TinyModel) -> None:
    config = EngineConfig(model=str(tiny_llama.gguf_path), device="cpu", num_kv_blocks=16)
    assert InferenceEngine(config).config.max_prefill_tokens_while_decoding == 0  # offline
    streaming = AsyncEngine.from_config(config)
    try:
        cap = streaming.engine.config.max_prefill_tokens_while_decoding
        assert cap == DEFAULT_CPU_PREFILL_TOKENS_WHILE_DECODING
    finally:
        streaming.shutdown()
