"""Engine greedy decoding equals transformers on tiny random models, under cache pressure."""

from __future__ import annotations

import pytest
import torch
from comparisons import shared_prefix_prompts
from fixtures_models import TinyModel
from transformers import AutoModelForCausalLM
from ziggurat_core.engine import InferenceEngine, SamplingParams
from ziggurat_core.engine.config import EngineConfig

MAX_NEW = 12


def _reference(model_dir: str, prompts: list[list[int]]) -> list[list[int]]:
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    model.eval()
    outs = []
    with torch.inference_mode():
        for prompt in prompts:
            ids = torch.tensor([prompt])
            gen = model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_NEW, min_new_tokens=MAX_NEW,
                do_sample=False, pad_token_id=0, eos_token_id=None,
            )
            outs.append(gen[0, len(prompt):].tolist())
    return outs


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("source", ["gguf", "safetensors"])
def test_greedy_matches_transformers_with_chunking_prefix_cache_and_preemption(
    tiny_model_factory, arch: str, source: str
) -> None:
    tiny: TinyModel = tiny_model_factory(arch)
    prompts = shared_prefix_prompts(tiny.config.vocab_size)
    expected = _reference(str(tiny.hf_dir), prompts)

    config = EngineConfig(
        model=str(tiny.gguf_path if source == "gguf" else tiny.hf_dir),
        block_size=4,
        num_kv_blocks=24,  # 96 slots for 8 sequences of up to 57 tokens: forces preemption
        max_num_seqs=8,
        max_num_batched_tokens=16,  # prompts of up to 45 tokens are prefilled in chunks
        enable_chunked_prefill=True,
        enable_prefix_caching=True,
    )
    engine = InferenceEngine(config)
    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        engine.add_request(f"p{i}", prompt_token_ids=prompt, sampling_params=params)
    finished = {o.request_id: o for o in engine.get_outputs() if o.finished}
    got = [finished[f"p{i}"].outputs[0].token_ids for i in range(len(prompts))]

    assert got == expected
    stats = engine.stats()
    assert stats.preemptions > 0, "the cache was meant to be too small for every sequence at once"
    assert stats.prefix_cache_hit_rate > 0
    assert stats.kv_blocks_used == 0


def test_preemption_with_sampling_keeps_seeded_output(tiny_llama: TinyModel) -> None:
    """A seeded sample recomputed after preemption gives the same tokens as one never preempted."""
    prompts = shared_prefix_prompts(tiny_llama.config.vocab_size, seed=5)
    params = SamplingParams(temperature=0.8, top_p=0.95, seed=11, max_tokens=MAX_NEW, ignore_eos=True)

    def run(num_blocks: int) -> tuple[list[list[int]], int]:
        engine = InferenceEngine(EngineConfig(model=str(tiny_llama.gguf_path), block_size=4, num_kv_blocks=num_blocks))
        for i, prompt in enumerate(prompts):
            engine.add_request(f"s{i}", prompt_token_ids=prompt, sampling_params=params)
        done = {o.request_id: o for o in engine.get_outputs() if o.finished}
        return [done[f"s{i}"].outputs[0].token_ids for i in range(len(prompts))], engine.stats().preemptions

    roomy, roomy_preemptions = run(400)
    tight, tight_preemptions = run(24)
    assert roomy_preemptions == 0 and tight_preemptions > 0
    assert tight == roomy
