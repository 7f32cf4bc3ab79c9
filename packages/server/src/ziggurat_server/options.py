"""The serve options, declared once: name, value parser, help. Flags, ZIGGURAT_* variables and
config-file keys are all derived from this table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ziggurat_core.engine.config import KV_CACHE_DTYPES, QUANTIZATIONS, parse_memory_size

ENV_PREFIX = "ZIGGURAT_"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
DTYPES = ("auto", "float32", "float16", "bfloat16")
ATTENTION_BACKENDS = ("auto", "torch", "xformers")


def _positive_int(text: Any) -> int:
    value = _int(text)
    if value < 1:
        raise ValueError(f"must be >= 1, got {value}")
    return value


def _int(text: Any) -> int:
    if isinstance(text, bool):
        raise ValueError(f"expected an integer, got {text!r}")
    if isinstance(text, int):
        return text
    try:
        return int(str(text).strip())
    except ValueError:
        raise ValueError(f"expected an integer, got {text!r}") from None


def _port(text: Any) -> int:
    value = _int(text)
    if not 0 <= value <= 65535:
        raise ValueError(f"must be in [0, 65535], got {value}")
    return value


def _non_negative_int(text: Any) -> int:
    value = _int(text)
    if value < 0:
        raise ValueError(f"must be >= 0, got {value}")
    return value


def parse_bool(text: Any) -> bool:
    if isinstance(text, bool):
        return text
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _text(text: Any) -> str:
    value = str(text).strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def _memory_size(text: Any) -> str:
    parse_memory_size(text if not isinstance(text, str) else text.strip())
    return str(text).strip()


def _device(text: Any) -> str:
    value = _text(text).lower()
    if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
        return value
    raise ValueError(f"must be auto, cpu, cuda or cuda:N, got {text!r}")


def _choice(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(text: Any) -> str:
        value = _text(text).lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {text!r}")
        return value

    return parse


@dataclass(frozen=True)
class Option:
    name: str  # field name in ServerSettings; the flag is --name-with-dashes
    parse: Callable[[Any], Any]
    help: str
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env_var(self) -> str:
        return ENV_PREFIX + self.name.upper()


OPTIONS: tuple[Option, ...] = (
    Option("model", _text, "model to serve: 'default' (SmolLM2-135M-Instruct), a .gguf file, or a "
           "Hugging Face folder with config.json and *.safetensors", "PATH|default"),
    Option("served_model_name", _text, "model id clients use (default: derived from the model)", "NAME"),
    Option("host", _text, "address to listen on", "HOST"),
    Option("port", _port, "TCP port to listen on (0 picks a free one)", "PORT"),
    Option("api_key", _text, "require 'Authorization: Bearer KEY' on every endpoint but /health",
           "KEY"),
    Option("device", _device, "auto, cpu, cuda or cuda:N", "DEVICE"),
    Option("dtype", _choice(DTYPES), "weights and activations dtype: " + ", ".join(DTYPES), "DTYPE"),
    Option("quantization", _choice(QUANTIZATIONS),
           "linear layers on CPU: auto (int8 for a quantised GGUF such as the default model, else "
           "none), none (the run dtype) or int8 (int8 weights and activations)", "MODE"),
    Option("kv_cache_dtype", _choice(KV_CACHE_DTYPES),
           "KV cache element type: auto (float16 with int8 linear layers, else the run dtype), "
           "float32, float16 or bfloat16", "DTYPE"),
    Option("attention_backend", _choice(ATTENTION_BACKENDS),
           "attention kernels: auto (xformers on CUDA when available), torch or xformers", "NAME"),
    Option("max_num_seqs", _positive_int, "most sequences decoded together in one step", "N"),
    Option("max_num_batched_tokens", _positive_int, "most tokens computed in one step", "N"),
    Option("kv_cache_memory", _memory_size, "KV cache size: bytes like 2GiB / 512MB, or a fraction "
           "of free device memory like 0.5 (default: the engine's choice)", "SIZE"),
    Option("num_kv_blocks", _positive_int, "exact number of KV blocks (wins over --kv-cache-memory)",
           "N"),
    Option("max_model_len", _positive_int, "context window cap (default: the model's)", "N"),
    Option("block_size", _positive_int, "tokens per KV block (a power of two)", "N"),
    Option("prefix_caching", parse_bool, "reuse KV blocks of shared prompt prefixes", None),
    Option("max_queue", _non_negative_int, "most sequences waiting for a slot; beyond it requests get "
           "429 with Retry-After", "N"),
    Option("shutdown_timeout", _non_negative_int, "seconds in-flight requests get to finish after "
           "SIGTERM", "SECONDS"),
    Option("seed", _int, "engine random seed (requests without a seed draw from it)", "N"),
    Option("num_threads", _positive_int, "CPU threads for torch (default: torch's choice)", "N"),
    Option("log_level", _choice(LOG_LEVELS), "log level: " + ", ".join(LOG_LEVELS), "LEVEL"),
)
