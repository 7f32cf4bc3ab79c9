"""`stream_interval`: an `AsyncEngine` stream sends its outputs every N steps, and what it sends
adds up to what the engine produced with N = 1: the same tokens, text, logprobs, stop and finish
reasons; the first output comes at once and the last one is never held back."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from fixtures_models import TinyModel
from ziggurat_core.engine import SamplingParams
from ziggurat_core.engine.async_engine import AsyncEngine
from ziggurat_core.engine.config import EngineConfig
from ziggurat_core.engine.outputs import CompletionOutput, Logprob, RequestOutput
from ziggurat_core.engine.stream_interval import PacedStream

INTERVAL = 4
PROMPTS = [[1, 5, 9, 13], [2, 6, 10], [3, 7, 11, 15, 19]]


# ---------------------------------------------------------------------- PacedStream alone
def _output(tokens: list[int], finished: bool = False) -> RequestOutput:
    logprobs = [Logprob(token_id=t, token=str(t), token_bytes=b"", logprob=-float(t))
                for t in tokens]
    return RequestOutput(
        request_id="r", prompt=None, prompt_token_ids=[1], finished=finished,
        outputs=[CompletionOutput(index=0, text="", token_ids=[], delta_text="".join(
            f"<{t}>" for t in tokens), delta_token_ids=list(tokens), delta_logprobs=logprobs,
            finish_reason="length" if finished else None)])


def test_held_outputs_reach_the_next_sent_one_whole() -> None:
    sent: list[RequestOutput | BaseException] = []
    stream = PacedStream(sent.append)
    stream.push(_output([1]), sending_step=False)  # the first: at once
    stream.push(_output([2]), sending_step=False)
    stream.push(_output([3]), sending_step=False)
    assert len(sent) == 1
    stream.push(_output([4]), sending_step=True)
    stream.push(_output([5]), sending_step=False)
    stream.push(_output([6], finished=True), sending_step=False)  # the last: at once
    outputs = [item for item in sent if isinstance(item, RequestOutput)]
    assert len(outputs) == len(sent) == 3
    chunks = [o.outputs[0] for o in outputs]
    assert [c.delta_token_ids for c in chunks] == [[1], [2, 3, 4], [5, 6]]
    assert [c.delta_text for c in chunks] == ["<1>", "<2><3><4>", "<5><6>"]
    assert [[lp.token_id for lp in c.delta_logprobs or []] for c in chunks] == [[1], [2, 3, 4],
                                                                                [5, 6]]
    assert outputs[-1].finished and chunks[-1].finish_reason == "length"


def test_a_failure_drops_what_was_held() -> None:
    sent: list[RequestOutput | BaseException] = []
    stream = PacedStream(sent.append)
    stream.push(_output([1]), sending_step=True)
    stream.push(_output([2]), sending_step=False)
    error = RuntimeError("gone")
    stream.fail(error)
    assert len(sent) == 2 and sent[-1] is error


def test_an_interval_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="stream_interval must be >= 1, got 0"):
        EngineConfig(stream_interval=0).validate()


# ---------------------------------------------------------------------- a real engine
@pytest.fixture(scope="module")
def engines(tiny_llama: TinyModel) -> Iterator[dict[int, AsyncEngine]]:
    built = {interval: AsyncEngine.from_config(EngineConfig(
        model=str(tiny_llama.gguf_path), device="cpu", num_threads=1, num_kv_blocks=64,
        stream_interval=interval)) for interval in (1, INTERVAL)}
    yield built
    for engine in built.values():
        engine.shutdown()


def _collect(engine: AsyncEngine, params: SamplingParams) -> list[list[RequestOutput]]:
    """Every output of each prompt, the prompts streamed together."""

    async def one(index: int, prompt: list[int]) -> list[RequestOutput]:
        return [output async for output in engine.generate(
            f"p{index}", prompt_token_ids=prompt, sampling_params=params)]

    async def main() -> list[list[RequestOutput]]:
        return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(PROMPTS))))

    return asyncio.run(main())


def _sample_deltas(outputs: list[RequestOutput], sample: int) -> list[CompletionOutput]:
    return [next(c for c in o.outputs if c.index == sample) for o in outputs]


def _joined(deltas: list[CompletionOutput]) -> tuple[list[int], str, list[Logprob]]:
    return ([t for d in deltas for t in d.delta_token_ids], "".join(d.delta_text for d in deltas),
            [lp for d in deltas for lp in d.delta_logprobs or []])


def test_chunks_of_n_steps_add_up_to_every_token_with_logprobs(
        engines: dict[int, AsyncEngine]) -> None:
    params = SamplingParams(max_tokens=17, temperature=0.0, ignore_eos=True, logprobs=2, n=2)
    every_step = _collect(engines[1], params)
    paced = _collect(engines[INTERVAL], params)
    for reference, outputs in zip(every_step, paced, strict=True):
        assert len(reference) == 17  # one output per token
        assert len(outputs) <= 2 + (17 - 1 + INTERVAL - 1) // INTERVAL
        final = outputs[-1]
        assert final.finished and all(not o.finished for o in outputs[:-1])
        assert len(final.outputs) == 2
        for sample in (0, 1):
            deltas = _sample_deltas(outputs, sample)
            assert len(deltas[0].delta_token_ids) == 1  # the first token at once
            assert all(len(d.delta_token_ids) <= INTERVAL for d in deltas)
            tokens, text, logprobs = _joined(deltas)
            ref_tokens, ref_text, ref_logprobs = _joined(_sample_deltas(reference, sample))
            assert tokens == ref_tokens == deltas[-1].token_ids
            assert text == ref_text == deltas[-1].text
            assert logprobs == ref_logprobs == deltas[-1].logprobs
            assert len(logprobs) == 17 and all(len(lp.top_logprobs) == 2 for lp in logprobs)
            assert deltas[-1].finish_reason == "length"
            assert deltas[-1].cumulative_logprob == pytest.approx(
                _sample_deltas(reference, sample)[-1].cumulative_logprob)


def test_a_stop_string_ends_the_paced_stream_where_it_ends_an_unpaced_one(
        engines: dict[int, AsyncEngine]) -> None:
    greedy = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    text = _collect(engines[1], greedy)[0][-1].outputs[0].text
    stop = text[len(text) // 2:len(text) // 2 + 3]
    assert stop.strip(), text  # a random model's text may hold spaces: a visible stop string
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True, stop=[stop])
    reference = _collect(engines[1], params)[0]
    paced = _collect(engines[INTERVAL], params)[0]
    assert len(paced) < len(reference)
    ref_final, final = reference[-1].outputs[0], paced[-1].outputs[0]
    assert final.finish_reason == ref_final.finish_reason == "stop"
    assert final.stop_reason == ref_final.stop_reason == stop
    assert _joined(_sample_deltas(paced, 0))[1] == final.text == ref_final.text
    assert stop not in final.text


def test_leaving_a_paced_stream_early_aborts_it(engines: dict[int, AsyncEngine]) -> None:
    engine = engines[INTERVAL]
    params = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)

    async def main() -> None:
        stream = engine.generate("early", prompt_token_ids=PROMPTS[0], sampling_params=params)
        await anext(stream)
        await anext(stream)
        await stream.aclose()  # type: ignore[attr-defined]

    asyncio.run(main())
    # The abort lands before the loop's next step; later requests get the whole cache.
    outputs = _collect(engine, SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True))
    assert all(o[-1].finished for o in outputs)
    stats = engine.stats()
    assert stats.running == stats.waiting == stats.kv_blocks_used == 0
