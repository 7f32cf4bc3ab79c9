"""Every serve option through each of its three sources (flag, ZIGGURAT_* variable, YAML key),
and the precedence between them: flags > environment > config file > defaults.

The expected values are written out here, one row per option, so that a change of how the
settings are parsed cannot rename a flag, a variable or a key, or change a value, unnoticed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from server_process import clean_environment, server_command
from ziggurat_server.cli import build_parser
from ziggurat_server.settings import (
    DEFAULT_FRONTEND_NICE,
    REPLICA_FRONTEND_NICE,
    ServerSettings,
    SettingsError,
    resolve_settings,
)

# option name, text given on the command line or in the environment, YAML value, parsed value
ROWS: list[tuple[str, str, Any, Any]] = [
    ("model", "models/x.gguf", "models/x.gguf", "models/x.gguf"),
    ("served_model_name", "my-model", "my-model", "my-model"),
    ("host", "0.0.0.0", "0.0.0.0", "0.0.0.0"),
    ("port", "9001", 9001, 9001),
    ("api_key", "s3cret", "s3cret", "s3cret"),
    ("device", "CUDA:1", "cuda:1", "cuda:1"),
    ("dtype", "bfloat16", "bfloat16", "bfloat16"),
    ("quantization", "int8", "int8", "int8"),
    ("kv_cache_dtype", "float16", "float16", "float16"),
    ("attention_backend", "Torch", "torch", "torch"),
    ("max_num_seqs", "5", 5, 5),
    ("max_num_batched_tokens", "256", 256, 256),
    ("max_prefill_tokens_while_decoding", "0", 0, 0),
    ("max_decode_slowdown", "0.5", 0.5, 0.5),
    ("kv_cache_memory", "2GiB", "2GiB", "2GiB"),
    ("num_kv_blocks", "77", 77, 77),
    ("gpu_memory_utilization", "0.75", 0.75, 0.75),
    ("max_model_len", "99", 99, 99),
    ("block_size", "32", 32, 32),
    ("max_queue", "0", 0, 0),
    ("max_request_bytes", "1048576", 1048576, 1048576),
    ("frontend_threads", "2", 2, 2),
    ("frontend_nice", "19", 19, 19),
    ("shutdown_timeout", "5", 5, 5),
    ("seed", "42", 42, 42),
    ("num_threads", "3", 3, 3),
    ("tensor_parallel_size", "2", 2, 2),
    ("stream_interval", "8", 8, 8),
    ("log_level", "DEBUG", "debug", "debug"),
    ("response_cache_max_entries", "10", 10, 10),
    ("response_cache_max_bytes", "1KiB", "1KiB", 1024),
    ("response_cache_ttl", "2.5", 2.5, 2.5),
]
FLAGS = {name: "--" + name.replace("_", "-") for name, *_ in ROWS} | {
    "prefix_caching": "--prefix-caching", "response_cache": "--response-cache",
    "enforce_eager": "--enforce-eager"}
ENV_VARS = {name: "ZIGGURAT_" + name.upper() for name in FLAGS}


@pytest.fixture()
def resolve(monkeypatch: pytest.MonkeyPatch) -> Any:
    """settings for `argv` with exactly the ZIGGURAT_* variables in `env` set."""

    def resolve(argv: list[str], env: dict[str, str] | None = None) -> ServerSettings:
        for name in [name for name in os.environ if name.startswith("ZIGGURAT_")]:
            monkeypatch.delenv(name)
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        return resolve_settings(build_parser().parse_args(["serve", *argv]))

    return resolve


def test_defaults(resolve: Any) -> None:
    settings = resolve([])
    assert settings == ServerSettings()
    assert settings.public_dict() == {
        "model": "default", "served_model_name": None, "host": "127.0.0.1", "port": 8000,
        "api_key": None, "device": "auto", "dtype": "auto", "attention_backend": "auto",
        "quantization": "auto", "kv_cache_dtype": "auto", "max_num_seqs": 64,
        "max_num_batched_tokens": 2048, "max_prefill_tokens_while_decoding": None,
        "max_decode_slowdown": None, "kv_cache_memory": None, "num_kv_blocks": None, "gpu_memory_utilization": 0.9,
        "max_model_len": None, "block_size": None, "prefix_caching": True, "adaptive_threads": True,
        "enforce_eager": False,
        "max_queue": 256,
        "max_request_bytes": 4 * 1024 * 1024, "frontend_threads": None, "frontend_nice": None,
        "shutdown_timeout": 30, "seed": 0,
        "num_threads": None, "tensor_parallel_size": 1, "num_replicas": 1, "ray_address": None,
        "replica_cpus": 1.0, "replica_gpus": 0.0, "stream_interval": 1, "log_level": "info",
        "response_cache": False, "response_cache_max_entries": 1024,
        "response_cache_max_bytes": 64 * 1024 * 1024, "response_cache_ttl": 3600.0,
    }


@pytest.mark.parametrize("name, text, yaml_value, expected", ROWS, ids=[row[0] for row in ROWS])
def test_every_option_from_every_source(resolve: Any, tmp_path: Path, name: str, text: str,
                                        yaml_value: Any, expected: Any) -> None:
    assert getattr(resolve([FLAGS[name], text]), name) == expected
    assert getattr(resolve([f"{FLAGS[name]}={text}"]), name) == expected
    assert getattr(resolve([], {ENV_VARS[name]: text}), name) == expected
    assert getattr(resolve([], {ENV_VARS[name]: f"  {text} "}), name) == expected
    for key in (name, name.replace("_", "-")):
        config = tmp_path / f"{key}.yaml"
        config.write_text(f"{key}: {yaml_value!r}\n" if isinstance(yaml_value, str)
                          else f"{key}: {yaml_value}\n")
        assert getattr(resolve(["--config", str(config)]), name) == expected
        assert getattr(resolve([], {"ZIGGURAT_CONFIG": str(config)}), name) == expected


def test_boolean_option_from_every_source(resolve: Any, tmp_path: Path) -> None:
    assert resolve([]).prefix_caching is True
    assert resolve(["--no-prefix-caching"]).prefix_caching is False
    assert resolve(["--prefix-caching"], {"ZIGGURAT_PREFIX_CACHING": "off"}).prefix_caching is True
    for text in ("0", "false", "no", "off", "False", "OFF"):
        assert resolve([], {"ZIGGURAT_PREFIX_CACHING": text}).prefix_caching is False, text
    for text in ("1", "true", "yes", "on", "True", "YES"):
        assert resolve(["--config", str(_yaml(tmp_path, "prefix_caching: false"))],
                       {"ZIGGURAT_PREFIX_CACHING": text}).prefix_caching is True, text
    assert resolve(["--config", str(_yaml(tmp_path, "prefix-caching: no"))]).prefix_caching is False
    with pytest.raises(SettingsError, match="ZIGGURAT_PREFIX_CACHING"):
        resolve([], {"ZIGGURAT_PREFIX_CACHING": "maybe"})


def test_response_cache_switch_from_every_source(resolve: Any, tmp_path: Path) -> None:
    assert resolve([]).response_cache is False
    assert resolve(["--response-cache"]).response_cache is True
    assert resolve(["--no-response-cache"], {"ZIGGURAT_RESPONSE_CACHE": "on"}).response_cache is False
    assert resolve([], {"ZIGGURAT_RESPONSE_CACHE": "yes"}).response_cache is True
    assert resolve(["--config", str(_yaml(tmp_path, "response-cache: true"))]).response_cache is True
    with pytest.raises(SettingsError, match="--response-cache-max-bytes"):
        resolve(["--response-cache-max-bytes", "lots"])
    with pytest.raises(SettingsError, match="--response-cache-ttl"):
        resolve(["--response-cache-ttl", "0"])


def test_enforce_eager_switch_reaches_the_engine(resolve: Any, tmp_path: Path) -> None:
    assert resolve([]).engine_config().enforce_eager is False
    assert resolve(["--enforce-eager"]).engine_config().enforce_eager is True
    assert resolve(["--no-enforce-eager"], {"ZIGGURAT_ENFORCE_EAGER": "1"}).enforce_eager is False
    assert resolve([], {"ZIGGURAT_ENFORCE_EAGER": "true"}).enforce_eager is True
    assert resolve(["--config", str(_yaml(tmp_path, "enforce-eager: true"))]).enforce_eager is True
    assert resolve(["--block-size", "256"]).engine_config().block_size == 256
    assert resolve([]).engine_config().block_size is None


def test_engine_config_carries_the_engine_options(resolve: Any) -> None:
    settings = resolve(["--kv-cache-memory", "512MiB", "--max-num-batched-tokens", "128",
                        "--dtype", "bfloat16", "--device", "cpu", "--max-model-len", "99",
                        "--no-prefix-caching"])
    config = settings.engine_config()
    assert config.kv_cache_memory == "512MiB"
    assert config.max_num_batched_tokens == 128
    assert (config.dtype, config.device, config.max_model_len) == ("bfloat16", "cpu", 99)
    assert (config.quantization, config.kv_cache_dtype) == ("auto", "auto")
    assert config.enable_prefix_caching is False
    assert config.gpu_memory_utilization == 0.9
    assert resolve(["--gpu-memory-utilization", "0.6"]).engine_config().gpu_memory_utilization == 0.6
    tuned = resolve(["--quantization", "none", "--kv-cache-dtype", "float16"]).engine_config()
    assert (tuned.quantization, tuned.kv_cache_dtype) == ("none", "float16")
    assert resolve(["--tensor-parallel-size", "2"]).engine_config().tensor_parallel_size == 2
    capped = resolve(["--max-prefill-tokens-while-decoding", "64"]).engine_config()
    assert capped.max_prefill_tokens_while_decoding == 64
    assert config.max_prefill_tokens_while_decoding is None  # the engine picks for its device
    paced = resolve(["--max-decode-slowdown", "0.1"]).engine_config()
    assert paced.max_decode_slowdown == 0.1
    assert config.max_decode_slowdown is None  # likewise
    assert config.adaptive_threads is True  # the engine applies it on CPU only
    assert resolve(["--no-adaptive-threads"]).engine_config().adaptive_threads is False
    assert resolve(["--stream-interval", "8"]).engine_config().stream_interval == 8
    # int8 linears are not split per rank: refused where the settings come in.
    with pytest.raises(SettingsError, match="tensor_parallel_size"):
        resolve(["--tensor-parallel-size", "2", "--quantization", "int8"])


def test_public_settings_hide_the_api_key(resolve: Any) -> None:
    assert resolve(["--api-key", "hunter2"]).public_dict()["api_key"] == "***"


def _yaml(tmp_path: Path, text: str, name: str = "server.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_precedence_flags_environment_file_defaults(resolve: Any, tmp_path: Path) -> None:
    config = _yaml(tmp_path, "port: 1111\nmax_num_seqs: 3\nmax-queue: 7\nseed: 5\n")
    env = {"ZIGGURAT_PORT": "2222", "ZIGGURAT_MAX_QUEUE": "9"}
    settings = resolve(["--config", str(config), "--port", "3333"], env)
    assert (settings.port, settings.max_queue, settings.max_num_seqs, settings.seed) == (
        3333, 9, 3, 5)
    assert settings.block_size is None  # default: the engine picks it from the backend
    assert resolve(["--config", str(config)], env).port == 2222
    assert resolve(["--config", str(config)]).port == 1111
    # --config wins over ZIGGURAT_CONFIG.
    other = _yaml(tmp_path, "port: 4444\n", "other.yaml")
    assert resolve(["--config", str(config)], {"ZIGGURAT_CONFIG": str(other)}).port == 1111
    assert resolve([], {"ZIGGURAT_CONFIG": str(other)}).port == 4444


def test_empty_values_leave_the_default(resolve: Any, tmp_path: Path) -> None:
    assert resolve([], {"ZIGGURAT_PORT": ""}).port == 8000
    config = _yaml(tmp_path, "port:\nserved_model_name:\n")
    settings = resolve(["--config", str(config)])
    assert (settings.port, settings.served_model_name) == (8000, None)
    from_empty_file = resolve(["--config", str(_yaml(tmp_path, "", "empty.yaml"))])
    assert from_empty_file.public_dict() == ServerSettings().public_dict()


def test_unknown_environment_variables_are_ignored(resolve: Any) -> None:
    assert resolve([], {"ZIGGURAT_NO_SUCH_OPTION": "1"}) == ServerSettings()


def test_memory_sizes_and_fractions_are_kept_as_given(resolve: Any, tmp_path: Path) -> None:
    for text in ("4GiB", "512MB", "1073741824", "0.5", "2g", "1.5GiB", "3 MiB", "1tb", "100k"):
        assert resolve(["--kv-cache-memory", text]).kv_cache_memory == text
    config = _yaml(tmp_path, "kv_cache_memory: 0.25\n")
    assert resolve(["--config", str(config)]).kv_cache_memory == "0.25"
    config = _yaml(tmp_path, "kv_cache_memory: 1073741824\n")
    assert resolve(["--config", str(config)]).kv_cache_memory == "1073741824"


@pytest.mark.parametrize("argv, env, yaml_text, fragments", [
    (["--port", "eighty"], {}, None, ["--port", "command line"]),
    ([], {"ZIGGURAT_PORT": "70000"}, None, ["--port", "ZIGGURAT_PORT"]),
    ([], {}, "port: -1\n", ["--port", "config file"]),
    ([], {}, "port: true\n", ["--port", "config file"]),
    (["--max-num-seqs", "0"], {}, None, ["--max-num-seqs"]),
    (["--max-num-batched-tokens", "-4"], {}, None, ["--max-num-batched-tokens"]),
    (["--max-prefill-tokens-while-decoding", "-1"], {}, None,
     ["--max-prefill-tokens-while-decoding"]),
    (["--max-decode-slowdown", "-0.1"], {}, None, ["--max-decode-slowdown"]),
    (["--max-decode-slowdown", "inf"], {}, None, ["--max-decode-slowdown", "finite"]),
    (["--max-decode-slowdown", "nan"], {}, None, ["--max-decode-slowdown"]),
    ([], {"ZIGGURAT_MAX_DECODE_SLOWDOWN": "a bit"}, None,
     ["--max-decode-slowdown", "ZIGGURAT_MAX_DECODE_SLOWDOWN"]),
    ([], {}, "max_decode_slowdown: true\n", ["--max-decode-slowdown", "config file"]),
    (["--kv-cache-memory", "lots"], {}, None, ["--kv-cache-memory"]),
    (["--kv-cache-memory", "5 parsecs"], {}, None, ["--kv-cache-memory"]),
    (["--kv-cache-memory", "0"], {}, None, ["--kv-cache-memory"]),
    (["--dtype", "int3"], {}, None, ["--dtype"]),
    (["--quantization", "int4"], {}, None, ["--quantization"]),
    (["--kv-cache-dtype", "int8"], {}, None, ["--kv-cache-dtype"]),
    (["--attention-backend", "flash"], {}, None, ["--attention-backend"]),
    (["--device", "tpu"], {}, None, ["--device"]),
    (["--device", "cuda:x"], {}, None, ["--device"]),
    (["--log-level", "loud"], {}, None, ["--log-level"]),
    (["--model", "  "], {}, None, ["--model"]),
    (["--block-size", "12"], {}, None, ["block_size"]),
    (["--num-kv-blocks", "0"], {}, None, ["--num-kv-blocks"]),
    (["--gpu-memory-utilization", "1.5"], {}, None, ["--gpu-memory-utilization"]),
    (["--gpu-memory-utilization", "0"], {}, None, ["--gpu-memory-utilization"]),
    ([], {"ZIGGURAT_MAX_QUEUE": "-1"}, None, ["--max-queue", "ZIGGURAT_MAX_QUEUE"]),
    ([], {"ZIGGURAT_SHUTDOWN_TIMEOUT": "soon"}, None, ["ZIGGURAT_SHUTDOWN_TIMEOUT"]),
    (["--frontend-nice", "-1"], {}, None, ["--frontend-nice", "command line", "-1"]),
    (["--frontend-nice", "20"], {}, None, ["--frontend-nice", "less than or equal to 19"]),
    ([], {"ZIGGURAT_FRONTEND_NICE": "low"}, None, ["--frontend-nice", "ZIGGURAT_FRONTEND_NICE"]),
    ([], {}, "frontend_nice: true\n", ["--frontend-nice", "config file"]),
    (["--frontend-threads", "0"], {}, None, ["--frontend-threads", "greater than or equal to 1"]),
    (["--stream-interval", "0"], {}, None, ["--stream-interval", "greater than or equal to 1"]),
    ([], {}, "prot: 8000\n", ["unknown option 'prot'"]),
    ([], {}, "- 1\n- 2\n", ["mapping"]),
    ([], {}, "port: [1\n", ["not valid YAML"]),
])
def test_bad_values_name_the_option_and_source(resolve: Any, tmp_path: Path, argv: list[str],
                                               env: dict[str, str], yaml_text: str | None,
                                               fragments: list[str]) -> None:
    if yaml_text is not None:
        argv = [*argv, "--config", str(_yaml(tmp_path, yaml_text))]
    with pytest.raises(SettingsError) as caught:
        resolve(argv, env)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_a_missing_config_file_is_an_error(resolve: Any, tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read config file"):
        resolve(["--config", str(tmp_path / "missing.yaml")])
    with pytest.raises(SettingsError, match="cannot read config file"):
        resolve([], {"ZIGGURAT_CONFIG": str(tmp_path / "missing.yaml")})


METAVARS = {
    "model": "PATH|default", "served_model_name": "NAME", "host": "HOST", "port": "PORT",
    "api_key": "KEY", "device": "DEVICE", "dtype": "DTYPE", "quantization": "MODE",
    "kv_cache_dtype": "DTYPE", "attention_backend": "NAME", "max_num_seqs": "N",
    "max_num_batched_tokens": "N", "max_prefill_tokens_while_decoding": "N",
    "max_decode_slowdown": "FRACTION",
    "kv_cache_memory": "SIZE", "num_kv_blocks": "N",
    "max_model_len": "N", "block_size": "N", "max_queue": "N", "frontend_threads": "N",
    "frontend_nice": "N", "shutdown_timeout": "SECONDS",
    "seed": "N", "num_threads": "N", "tensor_parallel_size": "N", "log_level": "LEVEL", "response_cache_max_entries": "N",
    "response_cache_max_bytes": "SIZE", "response_cache_ttl": "SECONDS",
}


def test_help_names_every_flag_metavar_variable_and_default() -> None:
    result = subprocess.run(server_command("serve", "--help"), capture_output=True, text=True,
                            timeout=120, env=clean_environment())
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    defaults = ServerSettings()
    for name, metavar in METAVARS.items():
        assert f"{FLAGS[name]} {metavar} " in text, name
    assert "--prefix-caching, --no-prefix-caching " in text
    assert "--response-cache, --no-response-cache " in text
    for name, variable in ENV_VARS.items():
        default = getattr(defaults, name)
        shown = f"[env {variable}]" if default is None else f"[env {variable}; default: {default}]"
        assert shown in text, name
    assert "--config FILE.yaml YAML file of options (keys as the flags, '-' or '_'); also " \
           "ZIGGURAT_CONFIG" in text


def test_the_frontend_nice_defaults_to_10_in_process_and_0_with_ray_replicas() -> None:
    assert ServerSettings().resolved_frontend_nice == DEFAULT_FRONTEND_NICE == 10
    assert ServerSettings(num_replicas=2).resolved_frontend_nice == REPLICA_FRONTEND_NICE == 0
    assert ServerSettings(ray_address="auto").resolved_frontend_nice == 0
    # Whatever is set wins, 0 and 19 included.
    assert ServerSettings(frontend_nice=0).resolved_frontend_nice == 0
    assert ServerSettings(num_replicas=2, frontend_nice=19).resolved_frontend_nice == 19
