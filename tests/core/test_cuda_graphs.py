"""Decode steps over static buffers padded to the captured batch sizes (cuda_graphs.py). The
capture itself needs CUDA; on CPU the same buffers, padding and step run eagerly, and must
sample exactly the tokens of the unpadded eager path."""

from __future__ import annotations

import random

import pytest
import torch
from fixtures_models import TinyModel
from ziggurat_core.engine import InferenceEngine, SamplingParams, decode_graph_setup
from ziggurat_core.engine import model_runner as model_runner_module
from ziggurat_core.engine.attention.base import StepLayout
from ziggurat_core.engine.attention.torch_backend import PortableAttentionBackend
from ziggurat_core.engine.config import EngineConfig
from ziggurat_core.engine.cuda_graphs import DecodeGraphRunner, decode_graphs_wanted
from ziggurat_core.engine.model_runner import ModelRunner

CPU = torch.device("cpu")


class StaticDecodeRunner(ModelRunner):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, static_decode=True, **kwargs)  # type: ignore[arg-type]


def make_engine(tiny: TinyModel, static: bool, monkeypatch: pytest.MonkeyPatch) -> InferenceEngine:
    with monkeypatch.context() as patch:
        if static:
            patch.setattr(model_runner_module, "ModelRunner", StaticDecodeRunner)
        # On CPU even on a GPU host: the eager padded path is what this compares.
        return InferenceEngine(EngineConfig(
            model=str(tiny.gguf_path), device="cpu", block_size=4, num_kv_blocks=200, max_num_seqs=6,
        ))


def generate(engine: InferenceEngine, prompts: list[list[int]], params: SamplingParams) -> list[list[int]]:
    for i, prompt in enumerate(prompts):
        engine.add_request(f"r{i}", prompt_token_ids=prompt, sampling_params=params)
    done = {o.request_id: o for o in engine.get_outputs() if o.finished}
    return [done[f"r{i}"].outputs[0].token_ids for i in range(len(prompts))]


def prompts_for(tiny: TinyModel, count: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, tiny.config.vocab_size) for _ in range(rng.randrange(2, 30))]
            for _ in range(count)]


@pytest.mark.parametrize("num_prompts", [1, 3, 5])
@pytest.mark.parametrize(
    "params",
    [SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True),
     SamplingParams(temperature=0.9, top_p=0.9, seed=7, max_tokens=10, ignore_eos=True)],
    ids=["greedy", "seeded"],
)
def test_padded_static_decode_samples_the_eager_tokens(
    tiny_llama: TinyModel, monkeypatch: pytest.MonkeyPatch, num_prompts: int, params: SamplingParams
) -> None:
    prompts = prompts_for(tiny_llama, num_prompts, seed=num_prompts)
    eager = make_engine(tiny_llama, static=False, monkeypatch=monkeypatch)
    static = make_engine(tiny_llama, static=True, monkeypatch=monkeypatch)
    assert isinstance(eager.runner, ModelRunner) and eager.runner.decode_graphs is None
    graphs = static.runner.decode_graphs  # type: ignore[union-attr]
    assert graphs is not None and not graphs.captured  # CPU: eager over the static buffers
    assert graphs.sizes == [1, 2, 4, 6]
    sizes_run: list[int] = []
    step = graphs.step
    graphs.step = lambda buffers, size, width: sizes_run.append(size) or step(buffers, size, width)

    assert generate(static, prompts, params) == generate(eager, prompts, params)
    # Every step after a prefill decoded over the buffers, the batch padded to a captured size.
    expected_size = {1: 1, 3: 4, 5: 6}[num_prompts]
    assert expected_size in sizes_run
    assert set(sizes_run) <= {1, 2, 4, 6}


def test_padded_decode_over_width_buckets_samples_the_eager_tokens(
    tiny_llama: TinyModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Steps whose contexts fit a narrower block-table width attend over that width only, and
    sample what the unpadded eager path samples."""
    monkeypatch.setattr(decode_graph_setup, "MIN_GRAPH_CONTEXT_TOKENS", 8)  # 2 blocks of 4
    prompts = prompts_for(tiny_llama, 5, seed=3)
    params = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    eager = make_engine(tiny_llama, static=False, monkeypatch=monkeypatch)
    static = make_engine(tiny_llama, static=True, monkeypatch=monkeypatch)
    graphs = static.runner.decode_graphs  # type: ignore[union-attr]
    assert graphs is not None and graphs.widths == [2, 4, 8, 16, 32, 64]
    widths_run: list[int] = []
    step = graphs.step
    graphs.step = lambda buffers, size, width: widths_run.append(width) or step(buffers, size, width)

    assert generate(static, prompts, params) == generate(eager, prompts, params)
    assert len(set(widths_run)) >= 2 and max(widths_run) <= 16  # contexts stay under 64 tokens


def test_padding_rows_own_a_block_the_scheduler_never_hands_out(
    tiny_llama: TinyModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    static = make_engine(tiny_llama, static=True, monkeypatch=monkeypatch)
    runner = static.runner
    assert isinstance(runner, ModelRunner) and runner.decode_graphs is not None
    assert runner.kv_spec.num_blocks == 200 == static.scheduler.block_manager.num_blocks
    assert all(cache.shape[1] == 201 for cache in runner.kv_caches)
    assert runner.decode_graphs.buffers.pad_block == 200


def test_buffers_hold_the_step_then_padding() -> None:
    steps: list[tuple[int, int]] = []
    runner = DecodeGraphRunner(
        lambda buffers, size, width: steps.append((size, width)) or torch.zeros(size, 5),
        sizes=[1, 2, 4], max_blocks=3, block_size=4, pad_block=9, device=CPU, capture=False,
    )
    assert runner.widths == [1, 2, 3]
    logits = runner.run([11, 12, 13], [0, 5, 9], [[3], [1, 2], [4, 5, 6]])
    assert logits is not None and logits.shape == (3, 5)
    assert steps == [(4, 3)]
    b = runner.buffers
    assert b.input_ids.tolist() == [11, 12, 13, 0]
    assert b.positions.tolist() == [0, 5, 9, 0]
    assert b.context_lens.tolist() == [1, 6, 10, 1]
    assert b.block_tables.tolist() == [[3, 9, 9], [1, 2, 9], [4, 5, 6], [9, 9, 9]]
    # A smaller step later: the rows it leaves are padding again, and it attends over the one
    # column its context needs.
    runner.run([7], [2], [[8]])
    assert steps == [(4, 3), (1, 1)]
    assert b.input_ids.tolist()[:1] == [7] and b.block_tables[0, 0] == 8


def test_a_step_attends_over_the_smallest_width_bucket_holding_its_longest_context() -> None:
    widths: list[int] = []
    runner = DecodeGraphRunner(
        lambda buffers, size, width: widths.append(width) or torch.zeros(size, 2),
        sizes=[1, 2], max_blocks=20, block_size=4, pad_block=99, device=CPU, capture=False,
        min_width=4,
    )
    assert runner.widths == [4, 8, 16, 20]
    for position in (0, 15, 16, 31, 32, 63, 64, 79):  # 1, 4, 5, 8, 9, 16, 17, 20 blocks
        runner.run([1, 2], [position, 0], [list(range(position // 4 + 1)), [50]])
    assert widths == [4, 4, 8, 8, 16, 16, 20, 20]


def test_a_batch_larger_than_every_size_runs_eagerly() -> None:
    runner = DecodeGraphRunner(
        lambda buffers, size, width: pytest.fail("no padded step for this batch"),
        sizes=[1, 2], max_blocks=2, block_size=4, pad_block=5, device=CPU, capture=False,
    )
    assert runner.padded_size(3) is None
    assert runner.run([1, 2, 3], [0, 0, 0], [[0], [1], [2]]) is None


def test_a_context_longer_than_the_buffers_is_refused() -> None:
    runner = DecodeGraphRunner(
        lambda buffers, size, width: torch.zeros(size, 2),
        sizes=[1], max_blocks=2, block_size=4, pad_block=5, device=CPU, capture=False,
    )
    with pytest.raises(ValueError, match="needs 3 blocks"):
        runner.run([1], [8], [[0, 1, 2]])


def test_capture_is_refused_off_cuda() -> None:
    with pytest.raises(ValueError, match="CUDA only"):
        DecodeGraphRunner(lambda buffers, size, width: torch.zeros(size, 2), sizes=[1], max_blocks=1,
                          block_size=4, pad_block=0, device=CPU, capture=True)


@pytest.mark.parametrize(
    ("device", "enforce_eager", "tensor_parallel_size", "wanted"),
    [("cuda", False, 1, True), ("cuda", True, 1, False), ("cuda", False, 2, False),
     ("cpu", False, 1, False), ("cuda:1", False, 1, True)],
)
def test_graphs_only_on_cuda_and_enforce_eager_turns_them_off(
    device: str, enforce_eager: bool, tensor_parallel_size: int, wanted: bool
) -> None:
    assert decode_graphs_wanted(torch.device(device), enforce_eager, tensor_parallel_size) is wanted


def test_enforce_eager_is_an_engine_setting() -> None:
    assert EngineConfig().enforce_eager is False
    assert EngineConfig(enforce_eager=True).enforce_eager is True


@pytest.mark.parametrize("seed", range(4))
def test_torch_backend_fixed_shape_decode_attends_like_prepare(seed: int) -> None:
    """The torch backend's capture-safe decode metadata (whole table rows, masked) attends as
    the per-step metadata does, on the C kernel path and on the torch ops path."""
    rng = random.Random(seed)
    block_size, max_blocks, num_seqs = 4, 6, 5
    contexts = [rng.randrange(1, max_blocks * block_size + 1) for _ in range(num_seqs)]
    ids = list(range(num_seqs * max_blocks))
    rng.shuffle(ids)
    tables = [ids[i * max_blocks:(i + 1) * max_blocks] for i in range(num_seqs)]
    layout = StepLayout([1] * num_seqs, contexts, tables, block_size)
    gen = torch.Generator().manual_seed(seed)
    cache = torch.randn(2, len(ids), block_size, 2, 8, generator=gen)
    q = torch.randn(num_seqs, 4, 8, generator=gen)
    k = torch.randn(num_seqs, 2, 8, generator=gen)
    v = torch.randn(num_seqs, 2, 8, generator=gen)
    lens = torch.tensor(contexts)
    for decode_kernel in (True, False):
        backend = PortableAttentionBackend(decode_kernel=decode_kernel)
        expected_cache = cache.clone()
        expected = backend.forward(q, k, v, expected_cache, backend.prepare(layout, CPU), 0.3)
        got_cache = cache.clone()
        metadata = backend.prepare_decode(torch.tensor(tables), lens, lens - 1, block_size)
        got = backend.forward(q, k, v, got_cache, metadata, 0.3)
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
        assert torch.equal(got_cache, expected_cache)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_captured_graphs_sample_the_eager_tokens_on_gpu(
    tiny_llama: TinyModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Width buckets of 1, 2, 4, ... blocks: the narrower ones are captured at first use.
    monkeypatch.setattr(decode_graph_setup, "MIN_GRAPH_CONTEXT_TOKENS", 16)
    prompts = prompts_for(tiny_llama, 5, seed=9)
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    outputs = []
    for enforce_eager in (False, True):
        engine = InferenceEngine(EngineConfig(
            model=str(tiny_llama.gguf_path), device="cuda", dtype="float32", max_num_seqs=6,
            num_kv_blocks=64, enforce_eager=enforce_eager,
        ))
        graphs = engine.runner.decode_graphs  # type: ignore[union-attr]
        assert (graphs is None) is enforce_eager
        assert enforce_eager or graphs.captured
        outputs.append(generate(engine, prompts, params))
        if not enforce_eager:
            assert len(graphs.graphs) > len(graphs.sizes)  # narrower widths captured lazily
    assert outputs[0] == outputs[1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_the_profiled_cache_sets_the_graphs_memory_aside_on_gpu(tiny_llama: TinyModel) -> None:
    engine = InferenceEngine(EngineConfig(
        model=str(tiny_llama.gguf_path), device="cuda", dtype="float32", max_num_seqs=6,
        gpu_memory_utilization=0.3,
    ))
    runner = engine.runner
    assert isinstance(runner, ModelRunner)
    profile = runner.memory_profile
    assert profile is not None and runner.decode_graphs is not None and runner.decode_graphs.captured
    assert profile.cuda_graph_bytes > 0  # the profiling capture took memory, and it was counted
    assert profile.cuda_graph_measured_bytes is not None
    assert engine.resolved_settings.memory_profile == profile
