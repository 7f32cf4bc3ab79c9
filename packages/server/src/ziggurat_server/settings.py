"""Server settings: CLI flags > ZIGGURAT_* environment variables > YAML config file > defaults.

`ServerSettings` declares every option once (type, default, help text); pydantic-settings reads
the environment and the YAML file and merges them under the flags, and the `serve` flags are
built from the same fields, so the three sources can never drift apart.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    AfterValidator,
    BeforeValidator,
    ByteSize,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)
from ziggurat_core.engine.config import (
    KV_CACHE_DTYPES,
    QUANTIZATIONS,
    EngineConfig,
    parse_memory_size,
)

from .thread_priority import NICEST

ENV_PREFIX = "ZIGGURAT_"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
DTYPES = ("auto", "float32", "float16", "bfloat16")
ATTENTION_BACKENDS = ("auto", "torch", "xformers")
# Room for a prompt at the largest context windows served, far below what would hurt memory.
DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024
# Well below the engine's threads (the kernel then runs the frontend mostly on cores they
# leave idle), yet not starved outright when the engine keeps every core busy.
DEFAULT_FRONTEND_NICE = 10
# With Ray replicas the frontend threads only wait on the replicas, which render and tokenise
# (ReplicaSet): a nice value there protects no stream and only delays each call's wake-up while
# the replicas keep the cores busy.
REPLICA_FRONTEND_NICE = 0


class SettingsError(ValueError):
    """An option has a bad value, or the config file cannot be read. The message names the option."""


# ---------------------------------------------------------------------- value types
def _integer(value: Any) -> Any:
    # pydantic would read YAML's `true` as 1.
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value!r}")
    return value


def _number(value: Any) -> Any:
    # pydantic would read YAML's `true` as 1.0.
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    return value


def _as_text(value: Any) -> Any:
    # A YAML number (`kv_cache_memory: 0.5`) is kept as written.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


def _one_of(choices: tuple[str, ...]) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value.lower() not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")
        return value.lower()

    return check


def _device(value: str) -> str:
    lowered = value.lower()
    if lowered in ("auto", "cpu", "cuda") or (lowered.startswith("cuda:") and lowered[5:].isdigit()):
        return lowered
    raise ValueError(f"must be auto, cpu, cuda or cuda:N, got {value!r}")


def _memory_size(value: str) -> str:
    parse_memory_size(value)
    return value


Int = Annotated[int, BeforeValidator(_integer)]
PositiveInt = Annotated[Int, Field(ge=1)]
NonNegativeInt = Annotated[Int, Field(ge=0)]
NonNegativeNumber = Annotated[float, BeforeValidator(_number), Field(ge=0, allow_inf_nan=False)]
Text = Annotated[str, Field(min_length=1)]
DType = Annotated[str, AfterValidator(_one_of(DTYPES))]
Quantization = Annotated[str, AfterValidator(_one_of(QUANTIZATIONS))]
KVCacheDType = Annotated[str, AfterValidator(_one_of(KV_CACHE_DTYPES))]
AttentionBackend = Annotated[str, AfterValidator(_one_of(ATTENTION_BACKENDS))]
LogLevel = Annotated[str, AfterValidator(_one_of(LOG_LEVELS))]


def _option(default: Any, help_text: str, metavar: str | None = None) -> Any:
    return Field(default, description=help_text, json_schema_extra={"metavar": metavar})


# ---------------------------------------------------------------------- the settings
class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True,
                                      extra="forbid", str_strip_whitespace=True)

    # Where the YAML options come from (--config or ZIGGURAT_CONFIG); not an option of its own.
    config: Path | None = Field(None, exclude=True, repr=False)

    model: Text = _option(
        "default", "model to serve: 'default' (SmolLM2-135M-Instruct), a .gguf file, or a Hugging "
        "Face folder with config.json and *.safetensors", "PATH|default")
    served_model_name: Text | None = _option(
        None, "model id clients use (default: derived from the model)", "NAME")
    host: Text = _option("127.0.0.1", "address to listen on", "HOST")
    port: Annotated[Int, Field(ge=0, le=65535)] = _option(
        8000, "TCP port to listen on (0 picks a free one)", "PORT")
    api_key: Text | None = _option(
        None, "require 'Authorization: Bearer KEY' on every endpoint but /health", "KEY")
    device: Annotated[Text, AfterValidator(_device)] = _option(
        "auto", "auto, cpu, cuda or cuda:N", "DEVICE")
    dtype: DType = _option(
        "auto", "weights and activations dtype: " + ", ".join(DTYPES), "DTYPE")
    quantization: Quantization = _option(
        "auto", "linear layers on CPU: auto (int8 for a quantised GGUF such as the default model, "
        "else none), none (the run dtype) or int8 (int8 weights and activations)", "MODE")
    kv_cache_dtype: KVCacheDType = _option(
        "auto", "KV cache element type: auto (float16 with int8 linear layers, else the run "
        "dtype), float32, float16 or bfloat16", "DTYPE")
    attention_backend: AttentionBackend = _option(
        "auto", "attention kernels: auto (xformers on CUDA when available), torch or xformers",
        "NAME")
    max_num_seqs: PositiveInt = _option(64, "most sequences decoded together in one step", "N")
    max_num_batched_tokens: PositiveInt = _option(2048, "most tokens computed in one step", "N")
    max_prefill_tokens_while_decoding: NonNegativeInt | None = _option(
        None, "while sequences decode, the most prompt tokens one step computes beside them (a "
        "chunk deep into a long prompt counts for more), so a long prompt does not stall the "
        "running streams; 0: no cap (default: 64 on CPU, no cap on CUDA)", "N")
    max_decode_slowdown: NonNegativeNumber | None = _option(
        None, "while sequences decode, how much longer than a decode-only step a step that also "
        "computes prompt tokens may take, as a fraction (0.25: 1.25 times; a decode-only step of "
        "the batch the prompts about to join will make); the engine measures "
        "its steps and sizes each one's prompt work to fit, within "
        "--max-prefill-tokens-while-decoding; 0: no pacing, the cap alone (default: 0.25 on "
        "CPU, off on CUDA)", "FRACTION")
    kv_cache_memory: Annotated[Text, BeforeValidator(_as_text), AfterValidator(_memory_size)] | None = (
        _option(None, "KV cache size: bytes like 2GiB / 512MB, or a fraction of free device "
                "memory like 0.5 (default: the engine's choice)", "SIZE"))
    num_kv_blocks: PositiveInt | None = _option(
        None, "exact number of KV blocks (wins over --kv-cache-memory)", "N")
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] = _option(
        0.9, "CUDA: fraction of the device's total memory the engine may use; the KV cache gets "
        "what the weights and a profiled step at --max-num-batched-tokens leave of it (unless "
        "--kv-cache-memory or --num-kv-blocks sets its size)", "FRACTION")
    max_model_len: PositiveInt | None = _option(
        None, "context window cap (default: the model's)", "N")
    block_size: PositiveInt | None = _option(
        None, "tokens per KV block (a power of two); unset: 256 with the xformers attention "
        "backend (CUDA), else 16", "N")
    prefix_caching: bool = _option(True, "reuse KV blocks of shared prompt prefixes")
    adaptive_threads: bool = _option(
        True, "CPU: while other work on the host waits for a CPU (this server's frontend, "
        "clients, other processes), run the model with one thread fewer, and take it back when "
        "that work leaves the core idle")
    enforce_eager: bool = _option(
        False, "run decode steps eagerly on CUDA instead of as CUDA graphs captured at start-up")
    max_queue: NonNegativeInt = _option(
        256, "most sequences waiting for a slot; beyond it requests get 429 with Retry-After", "N")
    max_request_bytes: PositiveInt = _option(
        DEFAULT_MAX_REQUEST_BYTES, "largest request body in bytes; a larger one gets 413 before "
        "it is read", "BYTES")
    frontend_threads: PositiveInt | None = _option(
        None, "threads that render chat templates, tokenise and detokenise (default: the CPUs "
        "the server may use, at least 4)", "N")
    frontend_nice: Annotated[Int, Field(ge=0, le=NICEST)] | None = _option(
        None, "how much nicer (lower CPU priority) than the server those threads run, 0-19, so "
        "that tokenising long prompts does not slow down the engine's running streams (0: the "
        f"same priority; Linux only; default: {DEFAULT_FRONTEND_NICE}, {REPLICA_FRONTEND_NICE} "
        "with Ray replicas, which tokenise themselves)", "N")
    shutdown_timeout: NonNegativeInt = _option(
        30, "seconds in-flight requests get to finish after SIGTERM", "SECONDS")
    seed: Int = _option(0, "engine random seed (requests without a seed draw from it)", "N")
    num_threads: PositiveInt | None = _option(
        None, "CPU threads for torch (default: torch's choice)", "N")
    tensor_parallel_size: PositiveInt = _option(
        1, "split the model across N local processes (torch.distributed; float32 linears)", "N")
    num_replicas: PositiveInt = _option(
        1, "engine replicas, each a Ray actor with its own model copy and KV cache (1 without "
        "--ray-address: the in-process engine, no Ray)", "N")
    ray_address: Text | None = _option(
        None, "Ray cluster to place the replicas on, e.g. ray://head:10001 or auto (default: a "
        "local Ray instance when --num-replicas > 1)", "ADDRESS")
    replica_cpus: Annotated[float, Field(ge=0)] = _option(
        1.0, "Ray CPUs each replica reserves (also its torch threads unless --num-threads)", "N")
    replica_gpus: Annotated[float, Field(ge=0)] = _option(
        0.0, "Ray GPUs each replica reserves", "N")
    stream_interval: PositiveInt = _option(
        1, "engine steps between a streamed response's chunks: each chunk carries the tokens of "
        "N steps (N tokens while decoding); the first and the last chunk go out at once", "N")
    log_level: LogLevel = _option("info", "log level: " + ", ".join(LOG_LEVELS), "LEVEL")
    response_cache: bool = _option(
        False, "serve repeated reproducible requests (temperature 0 or a seed) from the response "
        "cache, as if each sent cache: true (a request's cache: false still opts out)")
    response_cache_max_entries: PositiveInt = _option(
        1024, "most responses the response cache holds", "N")
    response_cache_max_bytes: Annotated[ByteSize, Field(gt=0)] = _option(
        64 * 1024 * 1024, "most bytes of response JSON the response cache holds (a byte count "
        "or a size like 64MiB)", "SIZE")
    response_cache_ttl: Annotated[float, Field(gt=0)] = _option(
        3600.0, "seconds a cached response is served before it expires", "SECONDS")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Flags (passed to the constructor), then the environment, then the YAML file."""
        config = init_settings().get("config") or env_settings().get("config")
        if not config:
            return init_settings, env_settings
        return init_settings, env_settings, YamlOptionsFile(settings_cls, Path(config))

    @model_validator(mode="after")
    def _engine_accepts(self) -> ServerSettings:
        self.engine_config().validate()
        return self

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
            gpu_memory_utilization=self.gpu_memory_utilization,
            max_model_len=self.max_model_len,
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens,
            max_prefill_tokens_while_decoding=self.max_prefill_tokens_while_decoding,
            max_decode_slowdown=self.max_decode_slowdown,
            block_size=self.block_size,
            enable_prefix_caching=self.prefix_caching,
            enforce_eager=self.enforce_eager,
            adaptive_threads=self.adaptive_threads,
            seed=self.seed,
            num_threads=self.num_threads,
            tensor_parallel_size=self.tensor_parallel_size,
            num_replicas=self.num_replicas,
            ray_address=self.ray_address,
            replica_cpus=self.replica_cpus,
            replica_gpus=self.replica_gpus,
            stream_interval=self.stream_interval,
        )

    @property
    def resolved_frontend_nice(self) -> int:
        """`frontend_nice`, or its default: DEFAULT_FRONTEND_NICE when the engine runs in this
        process, REPLICA_FRONTEND_NICE when Ray replicas serve (see there)."""
        if self.frontend_nice is not None:
            return self.frontend_nice
        return REPLICA_FRONTEND_NICE if self.engine_config().uses_ray else DEFAULT_FRONTEND_NICE

    def public_dict(self) -> dict[str, Any]:
        """Settings safe to show to clients (the API key is never echoed)."""
        data = self.model_dump()
        data["api_key"] = "***" if self.api_key else None
        return data


OPTION_NAMES = tuple(name for name in ServerSettings.model_fields if name != "config")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_var(name: str) -> str:
    return ENV_PREFIX + name.upper()


class YamlOptionsFile(YamlConfigSettingsSource):
    """The YAML config file: keys as the flags ('-' or '_'); an unknown key is an error (typos
    must not pass silently) and an empty one leaves the default in place."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        self.path = path.expanduser()
        if not self.path.is_file():
            raise SettingsError(f"cannot read config file {self.path}: no such file")
        super().__init__(settings_cls, yaml_file=self.path)

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        try:
            loaded = super()._read_file(file_path)
        except OSError as exc:
            raise SettingsError(
                f"cannot read config file {self.path}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise SettingsError(
                f"config file {self.path} is not valid YAML: {' '.join(str(exc).split())}"
            ) from None
        if not isinstance(loaded, dict):
            raise SettingsError(f"config file {self.path} must hold a mapping of option: value")
        values: dict[str, Any] = {}
        for key, value in loaded.items():
            name = str(key).replace("-", "_")
            if name not in OPTION_NAMES:
                raise SettingsError(f"config file {self.path}: unknown option {key!r}")
            if value is not None:
                values[name] = value
        return values


# ---------------------------------------------------------------------- the command line
class _OneLineErrorParser(argparse.ArgumentParser):
    """argparse prints usage plus the error; a one-line error is easier to read in logs."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise SettingsError(message)


def new_parser(prog: str, description: str) -> argparse.ArgumentParser:
    return _OneLineErrorParser(prog=prog, description=description)


def build_serve_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add every option (as a flag whose default is 'not given') to a `serve` parser."""
    parser.add_argument("--config", metavar="FILE.yaml", default=None,
                        help=f"YAML file of options (keys as the flags, '-' or '_'); "
                             f"also {env_var('config')}")
    for name in OPTION_NAMES:
        field = ServerSettings.model_fields[name]
        shown_default = "" if field.default is None else f"; default: {field.default}"
        help_text = f"{field.description} [env {env_var(name)}{shown_default}]"
        if field.annotation is bool:
            parser.add_argument(flag(name), dest=name, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        else:
            extra = field.json_schema_extra
            metavar = str(extra["metavar"]) if isinstance(extra, dict) else None
            parser.add_argument(flag(name), dest=name, metavar=metavar, default=None,
                                help=help_text)
    return parser


def resolve_settings(args: argparse.Namespace) -> ServerSettings:
    """The settings from the parsed flags, the ZIGGURAT_* environment and the config file."""
    given = {name: getattr(args, name) for name in ("config", *OPTION_NAMES)
             if getattr(args, name, None) is not None}
    try:
        return ServerSettings(**given)
    except ValidationError as exc:
        raise SettingsError(_describe(exc, given, os.environ)) from None


def _describe(error: ValidationError, given: Mapping[str, Any], environ: Mapping[str, str]) -> str:
    """The first problem, naming the option and where its value came from."""
    problem = error.errors()[0]
    message = problem["msg"].removeprefix("Value error, ")
    if not problem["loc"]:
        return message
    if "got " not in message:
        message += f", got {problem['input']!r}"
    name = str(problem["loc"][0])
    if name in given:
        source = "command line"
    elif environ.get(env_var(name)):
        source = env_var(name)
    else:
        config = given.get("config") or environ.get(env_var("config"))
        source = f"config file {config}"
    return f"{flag(name)} ({source}): {message}"
