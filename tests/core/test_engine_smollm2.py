"""The engine end to end on the real default model (SmolLM2-135M-Instruct, Q4_1 GGUF)."""

from __future__ import annotations

import asyncio

import pytest
from ziggurat_core.engine import (
    LLM,
    DuplicateRequestError,
    InferenceEngine,
    PromptTooLongError,
    RequestValidationError,
    SamplingParams,
)
from ziggurat_core.engine.async_engine import AsyncEngine
from ziggurat_core.engine.config import EngineConfig


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM(model="default", max_num_seqs=16)


@pytest.fixture(scope="module")
def engine(llm: LLM) -> InferenceEngine:
    return llm.engine


def _blocks_all_free(engine: InferenceEngine) -> bool:
    stats = engine.scheduler.block_manager.stats()
    return stats.num_used_blocks == 0 and not engine.has_unfinished_requests()


def test_default_model_config(engine: InferenceEngine) -> None:
    mc = engine.model_config
    assert (mc.num_hidden_layers, mc.hidden_size, mc.num_attention_heads, mc.num_key_value_heads) == (30, 576, 9, 3)
    assert mc.vocab_size == 49152 and mc.tie_word_embeddings
    assert engine.load_seconds > 0


def test_chat_knows_the_capital_of_france(llm: LLM) -> None:
    outs = llm.chat(
        [{"role": "user", "content": "What is the capital of France?"}],
        SamplingParams(temperature=0.0, max_tokens=40),
    )
    completion = outs[0].outputs[0]
    assert "Paris" in completion.text
    assert completion.finish_reason in ("stop", "length")
    assert outs[0].time_to_first_token is not None and outs[0].time_to_first_token > 0


def test_get_outputs_drives_requests_to_completion(engine: InferenceEngine) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    for i in range(5):
        engine.add_request(f"go-{i}", prompt=f"Count to {i + 3}:", sampling_params=params)
    finished = {o.request_id: o for o in engine.get_outputs() if o.finished}
    assert set(finished) == {f"go-{i}" for i in range(5)}
    for out in finished.values():
        assert len(out.outputs[0].token_ids) == 12
        assert out.outputs[0].finish_reason == "length"
        assert out.tokens_per_second is not None
    assert _blocks_all_free(engine)


def test_batched_greedy_equals_single_greedy(llm: LLM) -> None:
    prompts = ["The sun is", "My favourite food is pizza because", "Python is a programming language that"]
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    together = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
    alone = [llm.generate([p], params)[0].outputs[0].token_ids for p in prompts]
    assert together == alone


def test_stop_string_is_never_leaked(llm: LLM) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    base = llm.generate(["Once upon a time"], params)[0].outputs[0].text
    words = base.split()
    assert len(words) > 4
    stop = words[3][:3] if len(words[3]) >= 3 else words[3]
    cut = base.index(stop)
    stopped = llm.generate(["Once upon a time"], SamplingParams(temperature=0.0, max_tokens=40, stop=[stop]))[0]
    assert stopped.outputs[0].text == base[:cut]
    assert stopped.outputs[0].finish_reason == "stop"
    assert stopped.outputs[0].stop_reason == stop


def test_seeded_sampling_is_reproducible_whatever_the_batch(llm: LLM) -> None:
    seeded = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=16, seed=1234, ignore_eos=True)
    alone = llm.generate(["Tell me a story about a dragon."], seeded)[0].outputs[0].token_ids
    noise = SamplingParams(temperature=1.0, max_tokens=16, ignore_eos=True)
    batch = llm.generate(
        ["Hello there", "Tell me a story about a dragon.", "What is 2+2?"], [noise, seeded, noise]
    )
    assert batch[1].outputs[0].token_ids == alone
    other_seed = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=16, seed=99, ignore_eos=True)
    assert llm.generate(["Tell me a story about a dragon."], other_seed)[0].outputs[0].token_ids != alone


def test_n_samples_share_prompt_blocks(engine: InferenceEngine) -> None:
    prompt = "Write a haiku about the sea. " * 6
    engine.add_request("n3", prompt=prompt, sampling_params=SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=8, ignore_eos=True))
    final = [o for o in engine.get_outputs() if o.finished][-1]
    assert [c.index for c in final.outputs] == [0, 1, 2]
    assert all(len(c.token_ids) == 8 for c in final.outputs)
    assert final.num_cached_tokens >= engine.config.block_size  # siblings reused sample 0's blocks
    assert _blocks_all_free(engine)


def test_bad_requests_are_refused_and_leave_nothing(engine: InferenceEngine) -> None:
    used_before = engine.scheduler.block_manager.stats().num_used_blocks
    with pytest.raises(PromptTooLongError, match="context window"):
        engine.add_request("long", prompt_token_ids=[1] * (engine.max_model_len + 5))
    with pytest.raises(PromptTooLongError, match="max_tokens"):
        engine.add_request("long2", prompt="hi", sampling_params=SamplingParams(max_tokens=engine.max_model_len))
    with pytest.raises(RequestValidationError, match="empty"):
        engine.add_request("empty", prompt="")
    with pytest.raises(RequestValidationError, match="vocabulary"):
        engine.add_request("oov", prompt_token_ids=[10**9])
    params = SamplingParams()
    params.top_p = 0.0  # changed after construction: the engine checks again where it enters
    with pytest.raises(RequestValidationError, match="top_p") as info:
        engine.add_request("bad-params", prompt="hello", sampling_params=params)
    assert info.value.param == "top_p"
    with pytest.raises(RequestValidationError) as info:
        engine.add_request("bad-stop", prompt="hello", sampling_params=SamplingParams(stop_token_ids=[10**9]))
    assert info.value.param == "stop_token_ids"
    engine.add_request("dup", prompt="hello", sampling_params=SamplingParams(max_tokens=2))
    with pytest.raises(DuplicateRequestError):
        engine.add_request("dup", prompt="hello")
    assert engine.get_num_unfinished_requests() == 1  # the refused duplicate left the first alone
    list(engine.get_outputs())
    assert engine.get_num_unfinished_requests() == 0
    assert engine.scheduler.block_manager.stats().num_used_blocks == used_before == 0


def test_abort_frees_blocks_at_any_time(engine: InferenceEngine) -> None:
    engine.add_request("ab", prompt="A long story: " * 20, sampling_params=SamplingParams(max_tokens=100, ignore_eos=True))
    engine.step()
    engine.step()
    assert engine.scheduler.block_manager.stats().num_used_blocks > 0
    final = engine.abort_request("ab")
    assert final is not None and final.finished and final.outputs[0].finish_reason == "abort"
    assert _blocks_all_free(engine)


def test_async_engine_streams_deltas_and_cancels() -> None:
    async_engine = AsyncEngine.from_config(EngineConfig(model="default", max_num_seqs=8))
    try:
        async def collect(i: int) -> tuple[str, str]:
            text = ""
            final = ""
            params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
            async for out in async_engine.generate(f"a{i}", prompt=f"Number {i} is", sampling_params=params):
                text += out.outputs[0].delta_text
                final = out.outputs[0].text
            return text, final

        async def cancel_midway() -> None:
            params = SamplingParams(max_tokens=200, ignore_eos=True)
            agen = async_engine.generate("cancel-me", prompt="Go on and on", sampling_params=params)
            async for _ in agen:
                break
            await agen.aclose()

        async def main() -> list[tuple[str, str]]:
            results = await asyncio.gather(*(collect(i) for i in range(6)))
            await cancel_midway()
            with pytest.raises(RequestValidationError):
                async for _ in async_engine.generate("bad", prompt="", sampling_params=SamplingParams()):
                    pass
            for _ in range(100):
                stats = async_engine.stats()
                if stats.kv_blocks_used == 0 and stats.running == 0:
                    break
                await asyncio.sleep(0.05)
            return results

        results = asyncio.run(main())
        for text, final in results:
            assert text == final and final
        stats = async_engine.stats()
        assert stats.kv_blocks_used == 0 and stats.running == 0 and stats.waiting == 0
    finally:
        async_engine.shutdown()
