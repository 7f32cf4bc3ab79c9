"""The adaptive thread count in a real engine (tiny random model): on a fake host that reports
crowded CPUs the model's steps run with one OpenMP thread fewer, the stats say so, the greedy
tokens equal those of a steady team, the scheduler is told (its prefill pacer relearns the step
costs), and the setting resolves on for a streaming engine on CPU only."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from fixtures_models import TinyModel
from ziggurat_core.engine import InferenceEngine, SamplingParams
from ziggurat_core.engine.adaptive_threads import HostCpuSample
from ziggurat_core.engine.config import EngineConfig

STEP_S = 0.05
COSTS_CHANGED = -1  # marks, among the team sizes, where the scheduler heard of a change
# A team with a thread on every CPU this process may use, and at least two.
TEAM = max(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


@pytest.fixture(autouse=True)
def keep_torch_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


class CrowdedHost:
    """Every step adds STEP_S to the clock and 0.8 of it to the CPU pressure stall."""

    def __init__(self) -> None:
        self.now = 0.0
        self.stall_s = 0.0

    def clock(self) -> float:
        return self.now

    def read(self) -> HostCpuSample:
        return HostCpuSample(stall_s=self.stall_s, idle_s=0.0)


def generate(tiny: TinyModel, adaptive: bool) -> tuple[list[list[int]], list[int], InferenceEngine]:
    host = CrowdedHost()
    engine = InferenceEngine(EngineConfig(model=str(tiny.gguf_path), num_kv_blocks=64, num_threads=TEAM,
                                          adaptive_threads=adaptive),
                             clock=host.clock, host_cpu=host.read)
    team_sizes: list[int] = []
    execute = engine.runner.execute
    costs_changed = engine.scheduler.step_costs_changed

    def record_cost_change() -> None:
        team_sizes.append(COSTS_CHANGED)
        costs_changed()

    engine.scheduler.step_costs_changed = record_cost_change  # type: ignore[method-assign]

    def execute_on_crowded_host(*args: Any, **kwargs: Any) -> Any:
        team_sizes.append(torch.get_num_threads())
        host.now += STEP_S
        host.stall_s += 0.8 * STEP_S
        return execute(*args, **kwargs)

    engine.runner.execute = execute_on_crowded_host  # type: ignore[method-assign]
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    vocab = tiny.config.vocab_size
    for i in range(3):
        engine.add_request(f"r{i}", prompt_token_ids=[(5 * i + j) % vocab for j in range(7)],
                           sampling_params=params)
    tokens: dict[str, list[int]] = {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.finished:
                tokens[output.request_id] = output.outputs[0].token_ids
    return [tokens[f"r{i}"] for i in range(3)], team_sizes, engine


def test_a_crowded_host_gets_a_core_back_and_the_tokens_stay_the_same(tiny_llama: TinyModel) -> None:
    steady_tokens, steady_sizes, steady = generate(tiny_llama, adaptive=False)
    tokens, sizes, engine = generate(tiny_llama, adaptive=True)
    assert steady.adaptive_threads is None and set(steady_sizes) == {TEAM}
    assert tokens == steady_tokens
    # the scheduler heard of the change before the first step of the smaller team (its pacer's
    # step costs move with the team)
    change = sizes.index(COSTS_CHANGED)
    assert sizes.count(COSTS_CHANGED) == 1 and COSTS_CHANGED not in steady_sizes
    assert set(sizes[:change]) == {TEAM} and set(sizes[change + 1:]) == {TEAM - 1}
    stats = engine.stats()
    assert stats.cpu_threads == TEAM - 1 and stats.cpu_thread_yields == 1
    assert steady.stats().cpu_threads == TEAM and steady.stats().cpu_thread_yields == 0


def test_an_unset_setting_is_on_for_a_streaming_engine_on_cpu_only() -> None:
    config = EngineConfig()
    assert config.resolved_adaptive_threads("cpu", streaming=True)
    assert not config.resolved_adaptive_threads("cpu", streaming=False)
    assert not config.resolved_adaptive_threads("cuda", streaming=True)
    assert not EngineConfig(adaptive_threads=False).resolved_adaptive_threads("cpu", streaming=True)


def test_a_non_boolean_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="adaptive_threads"):
        EngineConfig(adaptive_threads="yes").validate()  # type: ignore[arg-type]
