"""The engine's block size: 256 where the attention backend is xformers (its kernels read the
paged cache directly only at a multiple of 256), 16 elsewhere, an explicit setting always;
runner, KV cache and block manager agree on it."""

from __future__ import annotations

import pytest
from fixtures_models import TinyModel
from ziggurat_core.engine import InferenceEngine, SamplingParams
from ziggurat_core.engine import model_runner as model_runner_module
from ziggurat_core.engine.attention import PortableAttentionBackend
from ziggurat_core.engine.config import EngineConfig


class NamedXFormers(PortableAttentionBackend):
    """The torch backend under the xformers name: on CPU the engine then resolves its settings
    as on a CUDA run with xformers, and still computes (xformers' kernels refuse CPU tensors)."""

    name = "xformers"


def engine_with(tiny: TinyModel, **settings: object) -> InferenceEngine:
    return InferenceEngine(EngineConfig(model=str(tiny.gguf_path), num_kv_blocks=8, **settings))


def block_sizes(engine: InferenceEngine) -> tuple[int | None, int, int, int]:
    runner = engine.runner
    assert not isinstance(runner, type(None))
    return (
        engine.config.block_size,
        runner.kv_spec.block_size,
        engine.scheduler.block_manager.block_size,
        runner.kv_caches[0].shape[2],  # type: ignore[union-attr]
    )


def greedy(engine: InferenceEngine, prompt: list[int]) -> list[int]:
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    engine.add_request("r", prompt_token_ids=prompt, sampling_params=params)
    done = [o for o in engine.get_outputs() if o.finished]
    return done[0].outputs[0].token_ids


@pytest.fixture()
def as_xformers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        model_runner_module, "select_attention_backend", lambda name, device, dtype: NamedXFormers()
    )


def test_cpu_without_a_setting_takes_16(tiny_llama: TinyModel) -> None:
    engine = engine_with(tiny_llama)
    assert engine.runner.attention.name == "torch"  # type: ignore[union-attr]
    assert block_sizes(engine) == (16, 16, 16, 16)


@pytest.mark.usefixtures("as_xformers")
def test_xformers_without_a_setting_takes_256(tiny_llama: TinyModel) -> None:
    engine = engine_with(tiny_llama)
    assert engine.runner.attention.name == "xformers"  # type: ignore[union-attr]
    assert block_sizes(engine) == (256, 256, 256, 256)
    prompt = list(range(3, 40))
    assert greedy(engine, prompt) == greedy(engine_with(tiny_llama, block_size=16), prompt)


@pytest.mark.usefixtures("as_xformers")
def test_an_explicit_block_size_wins(tiny_llama: TinyModel) -> None:
    assert block_sizes(engine_with(tiny_llama, block_size=32)) == (32, 32, 32, 32)


def test_an_unresolved_block_size_is_refused_where_it_is_needed() -> None:
    with pytest.raises(ValueError, match="not resolved"):
        _ = EngineConfig().resolved_block_size
    assert EngineConfig(block_size=64).resolved_block_size == 64
