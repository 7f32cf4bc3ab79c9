"""GGUF tensor names -> Hugging Face names, and undoing llama.cpp's Q/K row permutation."""

from __future__ import annotations

import re

import numpy as np

# Per-layer GGUF tensor stems and their Hugging Face module paths under model.layers.N.
_LAYER_TENSORS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAME = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")

# Tensors llama.cpp stores that are not weights of the Hugging Face model. rope_freqs holds the
# llama3 RoPE frequency divisors; the loader moves it into ModelConfig.rope_scaling instead.
NON_WEIGHT_TENSORS = frozenset({"rope_freqs.weight"})


def hf_tensor_name(gguf_name: str) -> str | None:
    """The Hugging Face name of a GGUF tensor, or None when the name is not one we know."""
    if gguf_name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[gguf_name]
    match = _LAYER_NAME.match(gguf_name)
    if match is None:
        return None
    layer, stem, kind = match.groups()
    module = _LAYER_TENSORS.get(stem)
    if module is None:
        return None
    return f"model.layers.{layer}.{module}.{kind}"


def unpermute_qk_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K permutation for llama-arch models.

    Hugging Face rotates the two halves of each head (rotate-half, NeoX style); llama.cpp rotates
    adjacent pairs, so its converter interleaves the halves of every head's rows: row
    (half h, index i) moves to (index i, half h). Here we swap those two axes back. Works for
    weights [rows, cols] and biases [rows].
    """
    rows = weight.shape[0]
    if rows % (2 * num_heads):
        raise ValueError(f"{rows} rows cannot be split into {num_heads} heads of even size")
    half = rows // num_heads // 2
    grouped = weight.reshape(num_heads, half, 2, *weight.shape[1:])
    return grouped.swapaxes(1, 2).reshape(weight.shape)
