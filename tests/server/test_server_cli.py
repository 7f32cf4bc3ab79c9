"""Settings precedence (flags > ZIGGURAT_* > YAML > defaults) and the CLI's exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from server_process import clean_environment, server_command
from ziggurat_server.cli import build_parser
from ziggurat_server.options import OPTIONS
from ziggurat_server.settings import (
    ServerSettings,
    SettingsError,
    read_config_file,
    resolve_settings,
)


def settings_from(argv: list[str], env: dict[str, str] | None = None) -> ServerSettings:
    args = build_parser().parse_args(["serve", *argv])
    return resolve_settings(args, env or {})


def test_defaults() -> None:
    settings = settings_from([])
    assert settings == ServerSettings()
    assert (settings.model, settings.host, settings.port) == ("default", "127.0.0.1", 8000)


def test_flags_beat_environment_beat_file(tmp_path: Path) -> None:
    config = tmp_path / "server.yaml"
    config.write_text("port: 1111\nmax-num-seqs: 3\nmax_queue: 7\nlog_level: debug\n")
    env = {"ZIGGURAT_PORT": "2222", "ZIGGURAT_MAX_QUEUE": "9"}
    settings = settings_from(["--config", str(config), "--port", "3333"], env)
    assert settings.port == 3333  # flag
    assert settings.max_queue == 9  # environment over file
    assert settings.max_num_seqs == 3  # file over default
    assert settings.log_level == "debug"
    assert settings_from(["--config", str(config)], env).port == 2222


def test_config_file_from_environment(tmp_path: Path) -> None:
    config = tmp_path / "server.yaml"
    config.write_text("served_model_name: from-file\nprefix_caching: false\n")
    settings = settings_from([], {"ZIGGURAT_CONFIG": str(config)})
    assert settings.served_model_name == "from-file"
    assert settings.prefix_caching is False
    assert settings.engine_config().enable_prefix_caching is False


def test_boolean_flags_and_env() -> None:
    assert settings_from(["--no-prefix-caching"]).prefix_caching is False
    assert settings_from([], {"ZIGGURAT_PREFIX_CACHING": "off"}).prefix_caching is False
    assert settings_from(["--prefix-caching"], {"ZIGGURAT_PREFIX_CACHING": "0"}).prefix_caching


def test_engine_config_carries_the_engine_options() -> None:
    settings = settings_from(["--kv-cache-memory", "512MiB", "--max-num-batched-tokens", "128",
                              "--dtype", "bfloat16", "--device", "cpu", "--max-model-len", "99"])
    config = settings.engine_config()
    assert config.kv_cache_memory == "512MiB"
    assert config.max_num_batched_tokens == 128
    assert (config.dtype, config.device, config.max_model_len) == ("bfloat16", "cpu", 99)
    assert (config.quantization, config.kv_cache_dtype) == ("auto", "auto")
    tuned = settings_from(["--quantization", "none", "--kv-cache-dtype", "float16"]).engine_config()
    assert (tuned.quantization, tuned.kv_cache_dtype) == ("none", "float16")


@pytest.mark.parametrize("argv, env, fragment", [
    (["--port", "eighty"], {}, "--port"),
    (["--port", "70000"], {}, "--port"),
    (["--max-num-seqs", "0"], {}, "--max-num-seqs"),
    (["--kv-cache-memory", "lots"], {}, "--kv-cache-memory"),
    (["--dtype", "int3"], {}, "--dtype"),
    (["--quantization", "int4"], {}, "--quantization"),
    (["--kv-cache-dtype", "int8"], {}, "--kv-cache-dtype"),
    (["--device", "tpu"], {}, "--device"),
    (["--block-size", "12"], {}, "block_size"),
    ([], {"ZIGGURAT_MAX_QUEUE": "-1"}, "ZIGGURAT_MAX_QUEUE"),
])
def test_bad_values_raise_settings_error(argv: list[str], env: dict[str, str],
                                         fragment: str) -> None:
    with pytest.raises(SettingsError, match=fragment):
        settings_from(argv, env)


def test_bad_config_files(tmp_path: Path) -> None:
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("prot: 8000\n")
    with pytest.raises(SettingsError, match="unknown option 'prot'"):
        read_config_file(unknown)
    not_mapping = tmp_path / "list.yaml"
    not_mapping.write_text("- 1\n- 2\n")
    with pytest.raises(SettingsError, match="mapping"):
        read_config_file(not_mapping)
    with pytest.raises(SettingsError, match="cannot read"):
        read_config_file(tmp_path / "missing.yaml")


def test_public_settings_hide_the_api_key() -> None:
    assert settings_from(["--api-key", "hunter2"]).public_dict()["api_key"] == "***"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(server_command(*args), capture_output=True, text=True, timeout=120,
                          env=env if env is not None else clean_environment())


def test_help_lists_every_option() -> None:
    result = run_cli("serve", "--help")
    assert result.returncode == 0
    for option in OPTIONS:
        assert option.flag in result.stdout, option.flag
        assert option.env_var in result.stdout, option.env_var
    assert "--config" in result.stdout


@pytest.mark.parametrize("args", [
    ("serve", "--port", "not-a-port"),
    ("serve", "--no-such-option"),
    ("serve", "--model", "/nonexistent/model.gguf"),
    ("launch",),
])
def test_bad_invocations_exit_2_with_one_line(args: tuple[str, ...]) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ziggurat-server: error:")
    assert result.stdout == ""


def test_missing_model_from_environment_names_the_path() -> None:
    result = run_cli("serve", env=clean_environment(ZIGGURAT_MODEL="/nope/missing.gguf"))
    assert result.returncode == 2
    assert "/nope/missing.gguf" in result.stderr


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "ziggurat-server"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True,
                            timeout=60, env=clean_environment())
    assert result.returncode == 0
    assert result.stdout.startswith("ziggurat-server ")
