"""The CLI's exit codes and one-line errors (the options themselves: test_server_settings.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from server_process import clean_environment, server_command


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(server_command(*args), capture_output=True, text=True, timeout=120,
                          env=env if env is not None else clean_environment())


@pytest.mark.parametrize("args", [
    ("serve", "--port", "not-a-port"),
    ("serve", "--no-such-option"),
    ("serve", "--frontend-nice", "20"),
    ("serve", "--frontend-nice", "-3"),
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
