"""The prefill pacer in a real engine (tiny random model) timed by a fake clock: the engine hands
each step's time to the scheduler's pacer, every step's prompt work stays within what the pacer
allowed, the long prompt finishes, greedy tokens equal those of the unpaced engine, an unset
`max_decode_slowdown` is on for a streaming engine on CPU only, and on CPU the steps are timed by
the stepping thread's CPU time, not by the wall."""

from __future__ import annotations

import time
from typing import Any

import pytest
from fixtures_models import TinyModel
from streams_then_long_prompt import streams_then_long_prompt
from ziggurat_core.engine import InferenceEngine
from ziggurat_core.engine.async_engine import AsyncEngine
from ziggurat_core.engine.config import DEFAULT_CPU_MAX_DECODE_SLOWDOWN, EngineConfig
from ziggurat_core.engine.llm_engine import step_cost_clock
from ziggurat_core.engine.sampling_params import SamplingParams
from ziggurat_core.engine.scheduler_output import SchedulerOutput

DECODE_SECONDS = 0.010
TOKEN_SECONDS = 0.001


class FakeClock:
    """Seconds that move only when the test moves them (`run` does, when a step runs the model:
    by DECODE_SECONDS plus TOKEN_SECONDS a charged prompt token of the step planned last)."""

    def __init__(self) -> None:
        self.seconds = 1000.0

    def __call__(self) -> float:
        return self.seconds


def run(tiny: TinyModel, cap: int, slowdown: float
        ) -> tuple[dict[str, list[int]], list[SchedulerOutput], InferenceEngine]:
    clock = FakeClock()
    engine = InferenceEngine(EngineConfig(model=str(tiny.gguf_path), num_kv_blocks=64,
                                          max_prefill_tokens_while_decoding=cap,
                                          max_decode_slowdown=slowdown), step_clock=clock)
    planned: list[SchedulerOutput] = []
    schedule, execute = engine.scheduler.schedule, engine.runner.execute

    def schedule_and_keep() -> SchedulerOutput:
        planned.append(schedule())
        return planned[-1]

    def execute_in_fake_time(*args: Any, **kwargs: Any) -> Any:
        clock.seconds += DECODE_SECONDS + TOKEN_SECONDS * planned[-1].charged_prefill_tokens
        return execute(*args, **kwargs)

    engine.scheduler.schedule = schedule_and_keep  # type: ignore[method-assign]
    engine.runner.execute = execute_in_fake_time  # type: ignore[method-assign]
    # the streams decode alone for a while when the long prompt arrives
    streams_then_long_prompt(engine, tiny.config.vocab_size, stream_tokens=60, decode_steps=6,
                             long_tokens=100)
    arrived = len(planned)
    tokens: dict[str, list[int]] = {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.finished:
                tokens[output.request_id] = output.outputs[0].token_ids
    return tokens, planned[arrived:], engine


def test_paced_prefill_stays_within_the_allowance_and_gives_the_same_tokens(tiny_llama: TinyModel) -> None:
    unpaced, _, _ = run(tiny_llama, cap=0, slowdown=0.0)
    paced, steps, engine = run(tiny_llama, cap=8, slowdown=0.25)
    assert paced == unpaced
    assert len(paced) == 5
    assert engine.config.max_decode_slowdown == 0.25
    beside_decodes = [out for out in steps if out.num_decodes and out.num_batched_tokens > out.num_decodes]
    for out in beside_decodes:
        assert out.prefill_allowance is not None and out.prefill_allowance <= 8
        assert out.charged_prefill_tokens <= out.prefill_allowance or out.num_batched_tokens == out.num_decodes + 1
    # The first step beside decodes gets the cap; from the fake clock the pacer learns a
    # decode step of 10 ms and a charged token of 1 ms: a quarter of a step is 2 tokens.
    assert beside_decodes[0].prefill_allowance == 8
    assert [out.prefill_allowance for out in beside_decodes[-10:]] == [2] * 10


def test_an_unset_slowdown_is_on_for_a_streaming_engine_on_cpu_only(tiny_llama: TinyModel) -> None:
    assert EngineConfig().resolved_max_decode_slowdown("cpu", streaming=True) == DEFAULT_CPU_MAX_DECODE_SLOWDOWN
    assert EngineConfig().resolved_max_decode_slowdown("cpu", streaming=False) == 0.0
    assert EngineConfig().resolved_max_decode_slowdown("cuda", streaming=True) == 0.0
    assert EngineConfig(max_decode_slowdown=0.5).resolved_max_decode_slowdown("cuda", False) == 0.5
    config = EngineConfig(model=str(tiny_llama.gguf_path), device="cpu", num_kv_blocks=16)
    offline = InferenceEngine(config)
    assert offline.config.max_decode_slowdown == 0.0 and offline.scheduler.pacer is None
    streaming = AsyncEngine.from_config(config)
    try:
        assert streaming.engine.config.max_decode_slowdown == DEFAULT_CPU_MAX_DECODE_SLOWDOWN
        assert streaming.engine.scheduler.pacer is not None
    finally:
        streaming.shutdown()


def test_on_cpu_the_pacer_times_a_step_by_the_stepping_threads_cpu_time(
        tiny_llama: TinyModel, monkeypatch: pytest.MonkeyPatch) -> None:
    # The thread's CPU clock moves 1.5 ms each time it is read (twice a step); the wall clock
    # given as `clock` does not move at all. The pacer must hear 1.5 ms a step.
    cpu = FakeClock()

    def thread_time() -> float:
        cpu.seconds += 0.0015
        return cpu.seconds

    monkeypatch.setattr(time, "thread_time", thread_time)
    engine = InferenceEngine(EngineConfig(model=str(tiny_llama.gguf_path), num_kv_blocks=64,
                                          max_decode_slowdown=0.25), clock=FakeClock())
    heard: list[float] = []
    record = engine.scheduler.record_step_time

    def hear(out: SchedulerOutput, seconds: float) -> None:
        heard.append(seconds)
        record(out, seconds)

    engine.scheduler.record_step_time = hear  # type: ignore[method-assign]
    engine.add_request("r", prompt_token_ids=[1, 2, 3], sampling_params=SamplingParams(
        max_tokens=4, ignore_eos=True))
    while engine.has_unfinished_requests():
        engine.step()
    assert len(heard) == 4 and all(seconds == pytest.approx(0.0015) for seconds in heard)


def test_off_cpu_or_across_ranks_the_pacer_times_a_step_by_the_wall() -> None:
    def wall() -> float:
        return 0.0

    # (A tensor-parallel runner is not a ModelRunner: its thread waits on the other ranks.)
    assert step_cost_clock(object(), "cpu", wall) is wall
    assert step_cost_clock(object(), "cuda", wall) is wall
