"""Server settings: CLI flags > ZIGGURAT_* environment variables > YAML config file > defaults.

The argument parser, the environment reader and the config-file reader are all built from the
one option table in `options.py`, so the three sources can never drift apart.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml
from ziggurat_core.engine.config import EngineConfig

from .options import ENV_PREFIX, OPTIONS, Option, parse_bool


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
    quantization: str = "auto"
    kv_cache_dtype: str = "auto"
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
            quantization=self.quantization,
            kv_cache_dtype=self.kv_cache_dtype,
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
        if option.parse is parse_bool:
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
