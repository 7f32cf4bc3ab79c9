"""Tensor parallelism (engine/distributed) on CPU with two gloo ranks: the same greedy tokens as
one process, KV blocks released on every rank, a dead rank reported instead of a hang. Each
test that starts ranks runs twice: with spawned rank processes, and in a process connected to
a local Ray instance, where the ranks are Ray actors."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest
from comparisons import shared_prefix_prompts
from fixtures_models import TinyModel
from ziggurat_core.engine import InferenceEngine, SamplingParams
from ziggurat_core.engine.config import EngineConfig
from ziggurat_core.engine.distributed import (
    TensorParallelConfigError,
    TensorParallelRankError,
)

MAX_NEW = 10


def _config(model: TinyModel, tp: int, **extra: object) -> EngineConfig:
    settings: dict[str, object] = dict(
        model=str(model.hf_dir), device="cpu", dtype="float32", num_threads=1, num_kv_blocks=64,
        max_num_batched_tokens=64, tensor_parallel_size=tp,
    )
    settings.update(extra)
    return EngineConfig(**settings)  # type: ignore[arg-type]


def _greedy(engine: InferenceEngine, prompts: list[list[int]]) -> list[list[int]]:
    params = SamplingParams(max_tokens=MAX_NEW, temperature=0.0, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        engine.add_request(f"r{i}", prompt_token_ids=prompt, sampling_params=params)
    done = {out.request_id: out for out in engine.get_outputs() if out.finished}
    return [list(done[f"r{i}"].outputs[0].token_ids) for i in range(len(prompts))]


@pytest.fixture(scope="module", params=["process", "ray"])
def ranks(request: pytest.FixtureRequest) -> Iterator[str]:
    """How the ranks other than 0 start: spawned processes, or Ray actors (this process is
    connected to a local Ray instance for the module's tests)."""
    if request.param == "process":
        yield "process"
        return
    import ray

    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False,
             _node_ip_address="127.0.0.1")
    try:
        yield "ray"
    finally:
        ray.shutdown()


def _rank_kind(engine: InferenceEngine) -> str:
    worker = engine.runner.workers[0]  # type: ignore[union-attr]
    return "ray" if type(worker).__name__ == "RayRank" else "process"


@pytest.fixture(params=["llama", "qwen2"])
def tp_pair(request: pytest.FixtureRequest, tiny_model_factory, ranks: str
            ) -> Iterator[tuple[TinyModel, InferenceEngine]]:
    """A tensor-parallel engine of two ranks on llama (untied head, GQA) or qwen2 (q/k/v
    biases, tied embeddings); closed after the test, which stops the worker process."""
    model = tiny_model_factory(request.param)
    engine = InferenceEngine(_config(model, 2))
    assert _rank_kind(engine) == ranks
    yield model, engine
    engine.close()


def test_greedy_tokens_equal_one_process(tp_pair: tuple[TinyModel, InferenceEngine]) -> None:
    model, tp_engine = tp_pair
    prompts = shared_prefix_prompts(model.config.vocab_size)
    one = InferenceEngine(_config(model, 1))
    expected = _greedy(one, prompts)
    assert _greedy(tp_engine, prompts) == expected
    assert all(len(tokens) == MAX_NEW for tokens in expected)
    assert (tp_engine.resolved_settings.tensor_parallel_size,
            one.resolved_settings.tensor_parallel_size) == (2, 1)


def test_aborts_free_blocks_on_every_rank(tiny_llama: TinyModel, ranks: str) -> None:
    engine = InferenceEngine(_config(tiny_llama, 2))
    try:
        runner = engine.runner
        params = SamplingParams(max_tokens=50, temperature=0.0, ignore_eos=True)
        for i in range(3):
            engine.add_request(f"a{i}", prompt_token_ids=list(range(5 + i, 40 + i)), sampling_params=params)
        for _ in range(4):
            engine.step()
        states = runner.rank_states()  # type: ignore[union-attr]
        assert [s.rank for s in states] == [0, 1]
        used = engine.stats().kv_blocks_used
        assert used > 0
        assert all(s.num_sequences == 3 and s.num_blocks_held == used for s in states)
        for i in range(3):
            engine.abort_request(f"a{i}")
        states = runner.rank_states()  # type: ignore[union-attr]
        assert engine.stats().kv_blocks_used == 0
        assert [(s.num_sequences, s.num_blocks_held) for s in states] == [(0, 0), (0, 0)]
    finally:
        engine.close()


def test_a_killed_rank_is_an_error_not_a_hang(tiny_llama: TinyModel, ranks: str) -> None:
    engine = InferenceEngine(_config(tiny_llama, 2))
    try:
        assert _rank_kind(engine) == ranks
        runner = engine.runner
        params = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True)
        engine.add_request("k", prompt_token_ids=list(range(3, 20)), sampling_params=params)
        engine.step()
        worker = runner.workers[0]  # type: ignore[union-attr]
        assert worker.pid is not None
        os.kill(worker.pid, signal.SIGKILL)
        worker.join()
        with pytest.raises(TensorParallelRankError, match="rank1"):
            engine.step()
        with pytest.raises(TensorParallelRankError):  # stays errored
            engine.step()
    finally:
        engine.close()


def test_size_must_divide_heads(tiny_llama: TinyModel) -> None:
    # 4 query heads, 2 KV heads: 4 ranks cannot split the KV heads. Refused before any
    # process starts.
    with pytest.raises(TensorParallelConfigError, match="num_key_value_heads"):
        InferenceEngine(_config(tiny_llama, 4))


def test_int8_is_refused_with_tensor_parallelism() -> None:
    with pytest.raises(ValueError, match="int8"):
        EngineConfig(tensor_parallel_size=2, quantization="int8").validate()
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        EngineConfig(tensor_parallel_size=0).validate()


def test_size_one_starts_no_process_and_no_group(tiny_llama: TinyModel) -> None:
    import multiprocessing

    import torch.distributed as dist
    from ziggurat_core.engine.model_runner import ModelRunner

    engine = InferenceEngine(_config(tiny_llama, 1))
    assert type(engine.runner) is ModelRunner
    assert not dist.is_initialized()
    assert multiprocessing.active_children() == []


def test_a_rank_that_fails_to_load_fails_the_start(tiny_llama: TinyModel, ranks: str) -> None:
    # kv_cache_memory too small for one block: every rank's ModelRunner raises; the engine
    # reports it and leaves no process or process group behind.
    import multiprocessing

    import torch.distributed as dist

    with pytest.raises(ValueError, match="holds no block"):
        InferenceEngine(_config(tiny_llama, 2, num_kv_blocks=None, kv_cache_memory=16))
    assert not dist.is_initialized()
    assert multiprocessing.active_children() == []


@pytest.mark.slow
def test_smollm2_greedy_tokens_equal_one_process() -> None:
    """SmolLM2-135M (9 query heads, 3 KV heads) across 3 ranks, float32 linears: the Q4_1
    GGUF is dequantised, and quantization='auto' picks float32 under tensor parallelism."""
    prompts = ["The capital of France is", "def fibonacci(n):", "Once upon a time"]
    params = SamplingParams(max_tokens=MAX_NEW, temperature=0.0, ignore_eos=True)

    def run(tp: int, quantization: str) -> tuple[list[list[int]], str]:
        engine = InferenceEngine(
            model="default", device="cpu", num_threads=1, max_num_seqs=4, max_model_len=256,
            tensor_parallel_size=tp, quantization=quantization,
        )
        try:
            for i, prompt in enumerate(prompts):
                engine.add_request(f"s{i}", prompt, params)
            done = {out.request_id: out for out in engine.get_outputs() if out.finished}
            tokens = [list(done[f"s{i}"].outputs[0].token_ids) for i in range(len(prompts))]
            return tokens, engine.resolved_settings.quantization
        finally:
            engine.close()

    expected, _ = run(1, "none")
    tokens, quantization = run(3, "auto")
    assert quantization == "none"
    assert tokens == expected


def test_async_engine_serves_then_reports_a_dead_rank(tiny_llama: TinyModel, ranks: str) -> None:
    """The server's path: the loop thread builds and steps the engine; a killed rank ends the
    stream with EngineDeadError, and shutdown leaves no process or group behind."""
    import asyncio
    import multiprocessing

    import torch.distributed as dist
    from ziggurat_core.engine.async_engine import AsyncEngine
    from ziggurat_core.engine.errors import EngineDeadError

    engine = AsyncEngine.from_config(_config(tiny_llama, 2))
    params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)

    async def tokens(request_id: str) -> list[int]:
        last = None
        async for out in engine.generate(request_id, prompt_token_ids=[5, 6, 7], sampling_params=params):
            last = out
        assert last is not None and last.finished
        return list(last.outputs[0].token_ids)

    try:
        assert len(asyncio.run(tokens("ok"))) == 4
        # /v1/info's device report reads the engine's own device through the runner.
        info = engine.device_info()  # a CPU run: no accelerators, the host's CPU
        assert info.devices == [] and info.cpu is not None
        worker = engine.engine.runner.workers[0]  # type: ignore[union-attr]
        assert worker.pid is not None
        os.kill(worker.pid, signal.SIGKILL)
        worker.join()
        with pytest.raises(EngineDeadError):
            asyncio.run(tokens("after"))
        assert engine.errored
    finally:
        engine.shutdown()
    assert not dist.is_initialized()
    assert multiprocessing.active_children() == []
