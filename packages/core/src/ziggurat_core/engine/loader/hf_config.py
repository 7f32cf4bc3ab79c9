"""Hugging Face config.json (+ generation_config.json, tokenizer_config.json) -> ModelConfig."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config import ModelConfig
from .errors import CheckpointError

# config.json "architectures" entry -> ModelConfig.architecture
SUPPORTED_HF_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}
_MODEL_TYPES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2"}
_SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: file is missing") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def hf_architecture(config_path: Path, config: dict[str, Any]) -> str:
    architectures = config.get("architectures") or []
    for name in architectures:
        if name in SUPPORTED_HF_ARCHITECTURES:
            return SUPPORTED_HF_ARCHITECTURES[name]
    if not architectures and config.get("model_type") in _MODEL_TYPES:
        return _MODEL_TYPES[config["model_type"]]
    found = architectures or [config.get("model_type")]
    raise CheckpointError(
        f"{config_path}: unsupported architecture {', '.join(map(str, found))} "
        f"(supported: {', '.join(SUPPORTED_HF_ARCHITECTURES)})"
    )


def model_config_from_hf(folder: Path) -> ModelConfig:
    config_path = folder / "config.json"
    config = read_json(config_path)
    arch = hf_architecture(config_path, config)

    def required(key: str) -> Any:
        value = config.get(key)
        if value is None:
            raise CheckpointError(f"{config_path}: {key} is missing")
        return value

    if config.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{config_path}: hidden_act {config['hidden_act']!r} is not supported (only silu)")
    if config.get("mlp_bias"):
        raise CheckpointError(f"{config_path}: mlp_bias is not supported")
    hidden_size = int(required("hidden_size"))
    num_heads = int(required("num_attention_heads"))
    rope_theta, rope_scaling = _rope_settings(config_path, config)
    # Qwen2 always has q/k/v biases; Llama/Mistral only when attention_bias says so.
    attention_bias = arch == "qwen2" or bool(config.get("attention_bias", False))

    generation_path = folder / "generation_config.json"
    generation = read_json(generation_path) if generation_path.is_file() else {}
    eos_ids = _id_list(config.get("eos_token_id")) + _id_list(generation.get("eos_token_id"))
    bos = config.get("bos_token_id", generation.get("bos_token_id"))
    return ModelConfig(
        architecture=arch,
        vocab_size=int(required("vocab_size")),
        hidden_size=hidden_size,
        intermediate_size=int(required("intermediate_size")),
        num_hidden_layers=int(required("num_hidden_layers")),
        num_attention_heads=num_heads,
        num_key_value_heads=int(config.get("num_key_value_heads") or num_heads),
        head_dim=int(config.get("head_dim") or hidden_size // num_heads),
        rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        max_position_embeddings=int(config.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        attention_bias=attention_bias,
        bos_token_id=None if bos is None else int(bos),
        eos_token_ids=list(dict.fromkeys(eos_ids)),
        name=folder.resolve().name,
        source_path=str(folder),
        source_format="safetensors",
    )


def _id_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, list):
        return [int(v) for v in value]
    return [int(value)]


def _rope_settings(config_path: Path, config: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(theta, scaling) from either transformers 5's `rope_parameters` or the older
    `rope_theta` + `rope_scaling` pair. Scaling comes back in `{"rope_type": ..., ...}` form."""
    parameters = config.get("rope_parameters")
    if isinstance(parameters, dict):
        theta = parameters.get("rope_theta", config.get("rope_theta", 10000.0))
        scaling: dict[str, Any] | None = {k: v for k, v in parameters.items() if k != "rope_theta"}
    else:
        theta = config.get("rope_theta", 10000.0)
        scaling = config.get("rope_scaling")
    if not scaling:
        return float(theta), None
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in _SUPPORTED_ROPE_TYPES:
        raise CheckpointError(f"{config_path}: RoPE scaling type {rope_type!r} is not supported")
    if rope_type == "default":
        return float(theta), None
    normalized = {k: v for k, v in scaling.items() if k != "type"}
    normalized["rope_type"] = rope_type
    return float(theta), normalized
