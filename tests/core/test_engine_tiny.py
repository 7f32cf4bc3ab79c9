"""Engine greedy decoding equals transformers on tiny random models, under cache pressure."""

from __future__ import annotations

import dataclasses
import gc
import weakref

import pytest
import torch
from comparisons import shared_prefix_prompts
from fixtures_models import TinyModel
from transformers import AutoModelForCausalLM
from ziggurat_core.engine import LLM, InferenceEngine, SamplingParams
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


def test_llm_serves_the_model_its_config_names(tiny_llama: TinyModel, tiny_qwen2: TinyModel) -> None:
    """`LLM(config=...)` once replaced config.model with "default" and loaded SmolLM2."""
    from_config = LLM(config=EngineConfig(model=str(tiny_llama.gguf_path), num_kv_blocks=16))
    assert from_config.engine.model_config.source_path == str(tiny_llama.gguf_path)
    assert from_config.engine.model_config.architecture == "llama"
    # An explicit model argument wins over the config's.
    overridden = LLM(str(tiny_qwen2.gguf_path),
                     config=EngineConfig(model=str(tiny_llama.gguf_path), num_kv_blocks=16))
    assert overridden.engine.model_config.architecture == "qwen2"


def test_engine_leaves_the_callers_config_unchanged(tiny_llama: TinyModel) -> None:
    config = EngineConfig(model=str(tiny_llama.gguf_path), num_kv_blocks=16)
    before = dataclasses.replace(config)
    engine = InferenceEngine(config, max_num_seqs=3, block_size=8)
    assert (engine.config.max_num_seqs, engine.config.block_size) == (3, 8)
    assert config == before
    assert engine.config is not config
    LLM(config=config, max_num_seqs=5)
    assert config == before


def test_unknown_engine_setting_is_a_type_error(tiny_llama: TinyModel) -> None:
    with pytest.raises(TypeError, match="max_num_sequences"):
        InferenceEngine(EngineConfig(model=str(tiny_llama.gguf_path)), max_num_sequences=3)


def test_prompt_logprobs_is_not_a_sampling_parameter() -> None:
    """The engine computes no prompt logprobs, so asking for them fails instead of being
    ignored."""
    with pytest.raises(TypeError, match="prompt_logprobs"):
        SamplingParams(prompt_logprobs=1)  # type: ignore[call-arg]


def test_logprobs_carry_exact_token_bytes_most_likely_first(tiny_llama: TinyModel) -> None:
    engine = InferenceEngine(EngineConfig(model=str(tiny_llama.gguf_path), num_kv_blocks=16))
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True, logprobs=3)
    engine.add_request("lp", prompt_token_ids=[5, 6, 7], sampling_params=params)
    (final,) = [o for o in engine.get_outputs() if o.finished]
    completion = final.outputs[0]
    assert completion.logprobs is not None and len(completion.logprobs) == 6
    tokenizer = engine.tokenizer
    for token_id, entry in zip(completion.token_ids, completion.logprobs, strict=True):
        assert entry.token_id == token_id
        assert entry.token_bytes == tokenizer.token_bytes(token_id)
        tops = entry.top_logprobs
        assert len(tops) == 3
        assert [t.logprob for t in tops] == sorted((t.logprob for t in tops), reverse=True)
        assert tops[0].token_id == token_id  # greedy: the sampled token is the most likely
        for top in tops:
            assert top.token_bytes == tokenizer.token_bytes(top.token_id)
            assert top.token == top.token_bytes.decode("utf-8", errors="replace")


def test_close_gives_the_kv_cache_back(tiny_llama: TinyModel) -> None:
    """After close() the engine's KV cache is freed, so one process can load another engine
    (on the first GPU a second engine did not fit: the first one's cache was still held)."""
    llm = LLM(model=str(tiny_llama.gguf_path), device="cpu", num_kv_blocks=32)
    llm.generate(["hello"], SamplingParams(max_tokens=2), use_tqdm=False)
    caches = [weakref.ref(cache) for cache in llm.engine.runner.kv_caches]
    llm.close()
    gc.collect()
    assert caches and all(cache() is None for cache in caches)
