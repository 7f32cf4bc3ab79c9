"""Models built on `meta` and loaded tensor by tensor straight into the run dtype."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixtures_models import TinyModel
from torch import nn
from ziggurat_core.engine.loader import load_checkpoint
from ziggurat_core.engine.models import LlamaForCausalLM, build_model
from ziggurat_core.engine.models.materialize import materialize_parameters

CPU = torch.device("cpu")


def test_a_model_built_on_meta_holds_no_parameter_storage(tiny_llama: TinyModel) -> None:
    config = load_checkpoint(tiny_llama.hf_dir).model_config
    with torch.device("meta"):
        model = LlamaForCausalLM(config)

    assert all(p.is_meta for p in model.parameters())
    assert all(b.is_meta for b in model.buffers())


def test_materialized_parameters_take_the_run_dtype_once_each(tiny_model_factory) -> None:
    tiny: TinyModel = tiny_model_factory("qwen2")  # tied embeddings and q/k/v biases
    config = load_checkpoint(tiny.hf_dir).model_config
    assert config.tie_word_embeddings
    with torch.device("meta"):
        model = LlamaForCausalLM(config)

    allocated = materialize_parameters(model, CPU, torch.bfloat16)

    params = list(model.parameters())
    assert {p.dtype for p in params} == {torch.bfloat16}
    assert {p.device for p in params} == {CPU}
    assert model.lm_head.weight is model.model.embed_tokens.weight
    # ModelConfig.num_parameters counts the tied matrix once, from the config alone.
    assert allocated == 2 * config.num_parameters()


def test_materializing_twice_is_refused() -> None:
    module = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="already has storage"):
        materialize_parameters(module, CPU, torch.float32)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("source", ["gguf", "hf"])
def test_loading_into_bfloat16_gives_the_weights_of_load_then_cast(
    tiny_model_factory, arch: str, source: str
) -> None:
    tiny: TinyModel = tiny_model_factory(arch)
    path = tiny.gguf_path if source == "gguf" else tiny.hf_dir
    float_model = build_model(load_checkpoint(path), CPU, torch.float32)
    float_cos = float_model.model.rotary_emb.cos_cache
    cast = float_model.to(torch.bfloat16)

    direct = build_model(load_checkpoint(path, dtype=torch.bfloat16), CPU, torch.bfloat16)

    expected = dict(cast.named_parameters())
    got = dict(direct.named_parameters())
    assert got.keys() == expected.keys()
    for name, tensor in got.items():
        assert tensor.dtype == torch.bfloat16, name
        assert torch.equal(tensor, expected[name]), name
    # The RoPE tables are computed on the device, in float32 as on a float32 run, and cast
    # per step to the same values the cast tables hold.
    rotary = direct.model.rotary_emb
    assert torch.equal(rotary.cos_cache, float_cos)
    positions = torch.arange(5)
    for ours, theirs in zip(
        rotary.cos_sin(positions, torch.bfloat16),
        cast.model.rotary_emb.cos_sin(positions, torch.bfloat16),
        strict=True,
    ):
        assert torch.equal(ours, theirs)


def test_a_bfloat16_build_never_holds_a_float32_copy_of_the_model() -> None:
    script = Path(__file__).with_name("load_peak_memory.py")
    env = dict(os.environ)
    # Every allocation is filled with a pattern (so allocated-but-unwritten memory counts) and
    # large ones are mapped and unmapped on their own (so freed memory leaves the count).
    env.update(MALLOC_PERTURB_="85", MALLOC_MMAP_THRESHOLD_="65536")
    done = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300, check=True
    )
    report = json.loads(done.stdout)

    ratio = report["peak_added_bytes"] / report["model_bytes"]
    # A float32 model alone is twice the bfloat16 one; the largest tensor loaded at a time is
    # under 4 % of the model.
    assert ratio < 1.5, report
