"""Tiny random Llama / Qwen2 checkpoints for tests, written in both formats the loader reads.

`make_tiny_llama(tmp_dir, arch, quant)` trains a ~300-token byte-level BPE tokenizer, builds a
random transformers model and writes:
- `hf_dir`: a Hugging Face folder (config.json, model.safetensors, tokenizer.json,
  tokenizer_config.json with a ChatML template, generation_config.json);
- `gguf_path`: the same model as llama.cpp's converter would write it (its metadata keys and
  tensor names, Q/K rows permuted for the llama architecture, llama3 RoPE factors as a
  `rope_freqs` tensor), with F32 tensors or with the 2-D weights quantised to `quant`.

With a quantised GGUF the HF folder holds the dequantised weights, so transformers loaded from
`hf_dir` is always the exact reference for both files. Nothing here uses the code under test.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, LlamaConfig, PretrainedConfig, Qwen2Config

TINY_VOCAB_SIZE = 300
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# `system_note`, when a caller sets it, shows that extra template variables reach the template.
CHAT_TEMPLATE = (
    "{% if system_note is defined %}<|im_start|>system\n{{ system_note }}<|im_end|>\n"
    "{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! This is a tiny tokenizer for testing an inference engine.",
    "Paged attention keeps keys and values in fixed-size blocks of the cache.",
    "Once upon a time there was a small language model that liked numbers: 0 1 2 3 4 5 6 7 8 9.",
    "def add(a, b):\n    return a + b\n",
    "Tokens, sequences, batches, schedulers and samplers all work together.",
]
# llama3 RoPE scaling with a short original context so that, with head_dim 16, some
# frequencies are scaled, some kept and some blended.
LLAMA3_ROPE: dict[str, Any] = {
    "rope_type": "llama3",
    "factor": 4.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}

# Hugging Face -> llama.cpp tensor names (written independently of the loader's mapping).
_GGUF_LAYER_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
_GGUF_GLOBAL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


@dataclass
class TinyModel:
    hf_dir: Path  # transformers reference; its weights equal the GGUF's after dequantisation
    gguf_path: Path
    config: PretrainedConfig  # the transformers config
    arch: str  # "llama" | "qwen2"
    quant: str | None  # GGUF quantisation of the 2-D weights, None for F32

    @property
    def tokenizer_path(self) -> Path:
        return self.hf_dir / "tokenizer.json"


def train_tiny_tokenizer(vocab_size: int = TINY_VOCAB_SIZE) -> Tokenizer:
    """A byte-level BPE (GPT-2 style) trained on a few sentences; ids 0..2 are special tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_TRAINING_TEXT, trainer=trainer)
    return tokenizer


def tiny_hf_config(arch: str, vocab_size: int) -> PretrainedConfig:
    """4 query heads sharing 2 kv heads (GQA), head_dim 16, 2 layers."""
    common: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        bos_token_id=SPECIAL_TOKENS.index("<|endoftext|>"),
        eos_token_id=SPECIAL_TOKENS.index("<|endoftext|>"),
    )
    if arch == "llama":
        rope = {**LLAMA3_ROPE, "rope_theta": 10000.0}
        return LlamaConfig(**common, rope_parameters=rope, tie_word_embeddings=False)
    if arch == "qwen2":
        rope = {"rope_type": "default", "rope_theta": 1000000.0}
        return Qwen2Config(**common, rope_parameters=rope, tie_word_embeddings=True)
    raise ValueError(f"unknown tiny arch {arch!r}")


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Weights large enough that logits spread over several units (the default init of std 0.02
    gives near-constant logits that would hide bugs), norms away from 1, biases non-zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.2 * noise)
            elif name.endswith(".bias"):
                param.copy_(0.5 * noise)
            elif name.endswith("embed_tokens.weight"):
                param.copy_(noise)
            else:
                param.copy_(noise / math.sqrt(param.shape[1]))


def _quantise_roundtrip(array: np.ndarray, qtype: gguf.GGMLQuantizationType) -> tuple[np.ndarray, np.ndarray]:
    """(quantised bytes, their dequantised float32 values)."""
    packed = gguf.quants.quantize(array, qtype)
    return packed, gguf.quants.dequantize(packed, qtype)


def _llama_cpp_permute(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """What llama.cpp's converter does to Q/K rows: interleave the two halves of each head."""
    rows = weight.shape[0]
    return weight.reshape(num_heads, 2, rows // num_heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _llama3_rope_factors(config: PretrainedConfig) -> np.ndarray:
    """The per-frequency divisors llama.cpp stores as `rope_freqs` for llama3 RoPE scaling."""
    rope = LLAMA3_ROPE
    head_dim = config.head_dim
    freqs = 1.0 / (config.rope_parameters["rope_theta"] ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    low_wavelen = rope["original_max_position_embeddings"] / rope["low_freq_factor"]
    high_wavelen = rope["original_max_position_embeddings"] / rope["high_freq_factor"]
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(rope["factor"])
        else:
            smooth = (rope["original_max_position_embeddings"] / wavelen - rope["low_freq_factor"]) / (
                rope["high_freq_factor"] - rope["low_freq_factor"]
            )
            factors.append(1.0 / ((1 - smooth) / rope["factor"] + smooth))
    return np.asarray(factors, dtype=np.float32)


def _to_gguf_layout(hf_name: str, array: np.ndarray, config: PretrainedConfig) -> np.ndarray:
    if config.model_type != "llama":  # llama.cpp permutes Q/K for the llama architecture only
        return array
    if ".q_proj." in hf_name:
        return _llama_cpp_permute(array, config.num_attention_heads)
    if ".k_proj." in hf_name:
        return _llama_cpp_permute(array, config.num_key_value_heads)
    return array


def _gguf_name(hf_name: str) -> str:
    if hf_name in _GGUF_GLOBAL_NAMES:
        return _GGUF_GLOBAL_NAMES[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)  # model.layers.N.<module>.<kind>
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{_GGUF_LAYER_NAMES[module]}.{kind}"


def _write_gguf_metadata(writer: gguf.GGUFWriter, config: PretrainedConfig, tokenizer: Tokenizer) -> None:
    writer.add_name("tiny-test-model")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)

    vocab = tokenizer.get_vocab(with_added_tokens=True)
    tokens = sorted(vocab, key=vocab.__getitem__)
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    # llama.cpp token types: 1 = normal, 3 = control.
    writer.add_token_types([3 if token in SPECIAL_TOKENS else 1 for token in tokens])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_bos_token_id(vocab["<|endoftext|>"])
    writer.add_eos_token_id(vocab["<|endoftext|>"])
    writer.add_eot_token_id(vocab["<|im_end|>"])
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)


def make_tiny_llama(
    tmp_dir: str | Path, arch: str = "llama", quant: str | None = None, seed: int = 0
) -> TinyModel:
    """Write a tiny random model under `tmp_dir/<arch>-<quant or f32>/` in both formats."""
    root = Path(tmp_dir) / f"{arch}-{(quant or 'f32').lower()}"
    hf_dir = root / "hf"
    hf_dir.mkdir(parents=True, exist_ok=True)
    gguf_path = root / "model.gguf"

    tokenizer = train_tiny_tokenizer()
    config = tiny_hf_config(arch, tokenizer.get_vocab_size())
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _randomise(model, seed)
    qtype = None if quant is None else gguf.GGMLQuantizationType[quant]

    writer = gguf.GGUFWriter(gguf_path, arch)
    _write_gguf_metadata(writer, config, tokenizer)
    if arch == "llama":
        writer.add_tensor("rope_freqs.weight", _llama3_rope_factors(config))
    state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # llama.cpp writes no output.weight for tied models
    for name, tensor in state.items():
        array = tensor.numpy().astype(np.float32)
        if qtype is not None and array.ndim == 2 and array.shape[1] % 32 == 0:
            packed, dequantised = _quantise_roundtrip(_to_gguf_layout(name, array, config), qtype)
            writer.add_tensor(_gguf_name(name), packed, raw_dtype=qtype)
            # Quantisation blocks run along rows, so it commutes with the Q/K row permutation:
            # the reference holds the dequantised values in Hugging Face row order.
            reference = _quantise_roundtrip(array, qtype)[1]
            assert np.array_equal(_to_gguf_layout(name, reference, config), dequantised)
            state[name].copy_(torch.from_numpy(reference))
        else:
            writer.add_tensor(_gguf_name(name), _to_gguf_layout(name, array, config))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    if qtype is not None:
        model.load_state_dict(state, strict=False)
    model.save_pretrained(hf_dir)
    model.generation_config.eos_token_id = [config.eos_token_id, SPECIAL_TOKENS.index("<|im_end|>")]
    model.generation_config.save_pretrained(hf_dir)
    tokenizer.save(str(hf_dir / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "chat_template": CHAT_TEMPLATE,
    }
    (hf_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    return TinyModel(hf_dir=hf_dir, gguf_path=gguf_path, config=config, arch=arch, quant=quant)
