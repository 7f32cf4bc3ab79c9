"""GGUF metadata -> ModelConfig (llama.cpp's key names, see its gguf-py constants)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import ModelConfig
from .errors import CheckpointError

SUPPORTED_GGUF_ARCHITECTURES = ("llama", "qwen2")  # Mistral GGUFs say "llama"

# Token ids that end a generation in llama.cpp: end of sequence, end of turn, end of message.
_EOS_KEYS = ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")


def gguf_architecture(path: Path, metadata: dict[str, Any]) -> str:
    arch = metadata.get("general.architecture")
    if arch is None:
        raise CheckpointError(f"{path}: GGUF metadata has no general.architecture")
    if arch not in SUPPORTED_GGUF_ARCHITECTURES:
        raise CheckpointError(
            f"{path}: unsupported architecture {arch!r} (supported: {', '.join(SUPPORTED_GGUF_ARCHITECTURES)})"
        )
    return str(arch)


def model_config_from_gguf(
    path: Path,
    metadata: dict[str, Any],
    *,
    vocab_size: int,
    has_output_weight: bool,
    has_qkv_bias: bool,
    rope_freq_factors: list[float] | None,
) -> ModelConfig:
    """Build the ModelConfig. The caller reads the facts only the tensors hold: the embedding row
    count (the logits width), whether an output matrix exists (else embeddings are tied), q/k/v
    biases, and llama3's RoPE divisors (the `rope_freqs` tensor)."""
    arch = gguf_architecture(path, metadata)

    def required(key: str) -> Any:
        value = metadata.get(f"{arch}.{key}")
        if value is None:
            raise CheckpointError(f"{path}: GGUF metadata lacks {arch}.{key}")
        return value

    def optional(key: str, default: Any) -> Any:
        value = metadata.get(f"{arch}.{key}")
        return default if value is None else value

    hidden_size = int(required("embedding_length"))
    num_heads = int(required("attention.head_count"))
    num_kv_heads = _single_int(path, f"{arch}.attention.head_count_kv", optional("attention.head_count_kv", num_heads))
    head_dim = int(optional("attention.key_length", hidden_size // num_heads))
    rope_dims = optional("rope.dimension_count", None)
    if rope_dims is not None and int(rope_dims) != head_dim:
        raise CheckpointError(f"{path}: partial rotary embeddings ({rope_dims} of {head_dim} dims) are not supported")

    eos_ids = [int(metadata[k]) for k in _EOS_KEYS if metadata.get(k) is not None]
    bos = metadata.get("tokenizer.ggml.bos_token_id")
    return ModelConfig(
        architecture=arch,
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=_single_int(path, f"{arch}.feed_forward_length", required("feed_forward_length")),
        num_hidden_layers=int(required("block_count")),
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=head_dim,
        rms_norm_eps=float(optional("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(optional("rope.freq_base", 10000.0)),
        rope_scaling=_rope_scaling(path, arch, metadata, rope_freq_factors),
        max_position_embeddings=int(optional("context_length", 2048)),
        tie_word_embeddings=not has_output_weight,
        attention_bias=has_qkv_bias,
        bos_token_id=None if bos is None else int(bos),
        eos_token_ids=list(dict.fromkeys(eos_ids)),
        name=path.name.removesuffix(".gguf"),
        source_path=str(path),
        source_format="gguf",
    )


def _single_int(path: Path, key: str, value: Any) -> int:
    """Some GGUFs store a per-layer list; we only support one value for every layer."""
    if isinstance(value, list):
        if not value or len(set(value)) != 1:
            raise CheckpointError(f"{path}: per-layer values of {key} ({value}) are not supported")
        value = value[0]
    return int(value)


def _rope_scaling(
    path: Path, arch: str, metadata: dict[str, Any], freq_factors: list[float] | None
) -> dict[str, Any] | None:
    kind = metadata.get(f"{arch}.rope.scaling.type")
    if freq_factors is not None:
        # llama3-style scaling: llama.cpp divides each RoPE frequency by its stored factor.
        return {"rope_type": "freq_factors", "freq_factors": freq_factors}
    if kind in (None, "none"):
        return None
    if kind == "linear":
        factor = metadata.get(f"{arch}.rope.scaling.factor")
        if factor is None:
            raise CheckpointError(f"{path}: linear RoPE scaling without {arch}.rope.scaling.factor")
        return {"rope_type": "linear", "factor": float(factor)}
    raise CheckpointError(f"{path}: RoPE scaling type {kind!r} is not supported")
