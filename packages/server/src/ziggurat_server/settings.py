"""Server settings: CLI flags > ZIGGURAT_* environment variables > YAML config file > defaults.

Every option is declared once in `OPTIONS`; the argument parser, the environment reader and the
config-file reader are all built from that table, so the three sources can never drift apart.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml
from ziggurat_core.engine.config import EngineConfig, parse_memory_size

ENV_PREFIX = "ZIGGURAT_"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
DTYPES = ("auto", "float32", "float16", "bfloat16")
ATTENTION_BACKENDS = ("auto", "torch", "xformers")


class SettingsError(ValueError):
    """An option has a bad value, or the config file cannot be read. The message names the option."""


@dataclass
class ServerSettings:
    model: str = "default"
    served_model_name: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    attention_backend: str = "auto"
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    kv_cache_memory: str | None = None
    num_kv_blocks: int | None = None
    max_model_len: int | None = None
    block_size: int = 16
    prefix_caching: bool = True
    max_queue: int = 256
    shutdown_timeout: int = 30
    seed: int = 0
    num_threads: int | None = None
    log_level: str = "info"

    def engine_config(self) -> EngineConfig:
        """The engine's share of the settings."""
        return EngineConfig(
            model=self.model,
            served_model_name=self.served_model_name,
            device=self.device,
            dtype=self.dtype,
            attention_backend=self.attention_backend,
            kv_cache_memory=self.kv_cache_memory,
            num_kv_blocks=self.num_kv_blocks,
            max_model_len=self.max_model_len,
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens,
            block_size=self.block_size,
            enable_prefix_caching=self.prefix_caching,
            seed=self.seed,
            num_threads=self.num_threads,
        )

    def public_dict(self) -> dict[str, Any]:
        """Settings safe to show to clients (the API key is never echoed)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["api_key"] = "***" if self.api_key else None
        return data


# --------------------------------------------------------------------------- value parsers
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


def _bool(text: Any) -> bool:
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
    Option("prefix_caching", _bool, "reuse KV blocks of shared prompt prefixes", None),
    Option("max_queue", _non_negative_int, "most sequences waiting for a slot; beyond it requests get "
           "429 with Retry-After", "N"),
    Option("shutdown_timeout", _non_negative_int, "seconds in-flight requests get to finish after "
           "SIGTERM", "SECONDS"),
    Option("seed", _int, "engine random seed (requests without a seed draw from it)", "N"),
    Option("num_threads", _positive_int, "CPU threads for torch (default: torch's choice)", "N"),
    Option("log_level", _choice(LOG_LEVELS), "log level: " + ", ".join(LOG_LEVELS), "LEVEL"),
)
_BY_NAME = {option.name: option for option in OPTIONS}


class _OneLineErrorParser(argparse.ArgumentParser):
    """argparse prints usage plus the error; a one-line error is easier to read in logs."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise SettingsError(message)


def build_serve_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add every option (as a flag whose default is 'not given') to a `serve` parser."""
    defaults = ServerSettings()
    parser.add_argument("--config", metavar="FILE.yaml", default=None,
                        help=f"YAML file of options (keys as the flags, '-' or '_'); "
                             f"also {ENV_PREFIX}CONFIG")
    for option in OPTIONS:
        default = getattr(defaults, option.name)
        shown_default = "" if default is None else f"; default: {default}"
        help_text = f"{option.help} [env {option.env_var}{shown_default}]"
        if option.parse is _bool:
            parser.add_argument(option.flag, dest=option.name, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        else:
            parser.add_argument(option.flag, dest=option.name, metavar=option.metavar,
                                default=None, help=help_text)
    return parser


def _parse_value(option: Option, value: Any, source: str) -> Any:
    try:
        return option.parse(value)
    except ValueError as exc:
        raise SettingsError(f"{option.flag} ({source}): {exc}") from None


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Option values from a YAML mapping; unknown keys are an error (typos must not pass silently)."""
    file = Path(path).expanduser()
    try:
        loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"cannot read config file {file}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise SettingsError(f"config file {file} is not valid YAML: {exc}".replace("\n", " ")) from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise SettingsError(f"config file {file} must hold a mapping of option: value")
    values: dict[str, Any] = {}
    for key, value in loaded.items():
        name = str(key).replace("-", "_")
        option = _BY_NAME.get(name)
        if option is None:
            raise SettingsError(f"config file {file}: unknown option {key!r}")
        if value is not None:  # an empty key leaves the default in place
            values[name] = _parse_value(option, value, f"config file {file}")
    return values


def read_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for option in OPTIONS:
        raw = environ.get(option.env_var)
        if raw is not None and raw != "":
            values[option.name] = _parse_value(option, raw, option.env_var)
    return values


def resolve_settings(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> ServerSettings:
    """Merge the sources, highest priority last applied: defaults, file, environment, flags."""
    environ = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    config_path = getattr(args, "config", None) or environ.get(ENV_PREFIX + "CONFIG") or None
    if config_path:
        merged.update(read_config_file(config_path))
    merged.update(read_environment(environ))
    for option in OPTIONS:
        value = getattr(args, option.name, None)
        if value is not None:
            merged[option.name] = _parse_value(option, value, "command line")
    settings = ServerSettings(**merged)
    try:
        settings.engine_config().validate()
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    return settings


def new_parser(prog: str, description: str) -> argparse.ArgumentParser:
    return _OneLineErrorParser(prog=prog, description=description)
