"""Building the C kernels (cpu_kernels/build.py): a failed build is remembered, an unusable cache
directory falls back to a private temporary one, loading the library leaves the process's float
environment alone, and a CUDA-shaped run never builds it."""

from __future__ import annotations

import logging
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from fixtures_models import TinyModel
from ziggurat_core.engine import model_runner
from ziggurat_core.engine.attention.base import StepLayout
from ziggurat_core.engine.config import EngineConfig
from ziggurat_core.engine.cpu_kernels import build, load_cpu_library
from ziggurat_core.engine.loader import load_checkpoint

# A stand-in compiler: answers --version with $FAKECC_VERSION and the macro query with nothing,
# and fails every build, counting the attempts in $FAKECC_COUNT.
FAKE_COMPILER = """#!/bin/sh
case "$*" in
  *--version*) echo "fakecc $FAKECC_VERSION"; exit 0 ;;
  *-dM*) exit 0 ;;
esac
echo build >> "$FAKECC_COUNT"
echo "fakecc: simulated error in the kernels" >&2
exit 1
"""


@pytest.fixture
def fresh_build_state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Nothing memoised in this process, no kernel switches set, an empty private temp dir;
    returns the configured cache dir (ZIGGURAT_CACHE_DIR/kernels)."""
    for memo in ("_loaded", "_native_isas", "_compiler_versions", "_wrappers"):
        monkeypatch.setattr(build, memo, {})
    for name in ("ZIGGURAT_CPU_KERNELS", "ZIGGURAT_CPU_ISA", "XDG_CACHE_HOME", "CC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ZIGGURAT_CACHE_DIR", str(tmp_path / "cache"))
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    return tmp_path / "cache" / "kernels"


@pytest.fixture
def fake_compiler(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Installs the failing stand-in as $CC; returns the file counting its build attempts."""
    compiler = tmp_path / "fakecc"
    compiler.write_text(FAKE_COMPILER)
    compiler.chmod(0o755)
    count = tmp_path / "attempts"
    monkeypatch.setenv("CC", str(compiler))
    monkeypatch.setenv("FAKECC_VERSION", "1.0")
    monkeypatch.setenv("FAKECC_COUNT", str(count))
    return count


def attempts(count: Path) -> int:
    return len(count.read_text().splitlines()) if count.exists() else 0


def as_a_new_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for memo in ("_loaded", "_native_isas", "_compiler_versions"):
        monkeypatch.setattr(build, memo, {})


def test_a_failed_build_is_remembered_until_its_inputs_change(
    fresh_build_state: Path,
    fake_compiler: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert load_cpu_library() is None
    assert attempts(fake_compiler) == 1
    [marker] = fresh_build_state.glob("*.failed")
    assert "simulated error in the kernels" in marker.read_text()
    assert not list(fresh_build_state.glob("*.so"))

    assert load_cpu_library() is None  # the same process: memoised
    as_a_new_process(monkeypatch)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ziggurat.engine"):
        assert load_cpu_library() is None
    assert attempts(fake_compiler) == 1  # no second compile
    assert str(marker) in caplog.text and "delete it to retry" in caplog.text

    # Each input of the build retries it once: the compiler, the flags, the sources.
    monkeypatch.setenv("FAKECC_VERSION", "2.0")
    as_a_new_process(monkeypatch)
    assert load_cpu_library() is None
    assert attempts(fake_compiler) == 2
    monkeypatch.setattr(build, "_FLAGS", [*build._FLAGS, "-DZIGGURAT_TEST_FLAG"])
    as_a_new_process(monkeypatch)
    assert load_cpu_library() is None
    assert attempts(fake_compiler) == 3
    extra = tmp_path / "extra.c"
    extra.write_text("int ziggurat_test_extra;\n")
    monkeypatch.setattr(build, "_SOURCES", [*build._SOURCES, extra])
    as_a_new_process(monkeypatch)
    assert load_cpu_library() is None
    assert attempts(fake_compiler) == 4
    assert len(list(fresh_build_state.glob("*.failed"))) == 4

    as_a_new_process(monkeypatch)
    assert load_cpu_library() is None
    assert attempts(fake_compiler) == 4


def test_a_compiler_that_hangs_is_remembered_too(
    fresh_build_state: Path, fake_compiler: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_run = subprocess.run

    def hanging_build(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        if "-shared" in command:
            raise subprocess.TimeoutExpired(command, build._COMPILE_TIMEOUT_S)
        return real_run(command, **kwargs)  # type: ignore[call-overload,no-any-return]

    monkeypatch.setattr(build.subprocess, "run", hanging_build)
    assert load_cpu_library() is None
    [marker] = fresh_build_state.glob("*.failed")
    assert "did not finish" in marker.read_text()


def test_an_unwritable_cache_dir_falls_back_to_a_private_temp_dir(
    fresh_build_state: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the cache directory would go")
    monkeypatch.setenv("ZIGGURAT_CACHE_DIR", str(blocker))
    with caplog.at_level(logging.WARNING, logger="ziggurat.engine"):
        library = load_cpu_library()
    assert library is not None  # built for real, and loaded
    private = tmp_path / "tmp" / f"ziggurat-{os.getuid()}"
    assert len(list((private / "kernels").glob("ziggurat_cpu-*.so"))) == 1
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    assert str(blocker) in caplog.text and "not writable" in caplog.text


@pytest.mark.parametrize("error", [RuntimeError, KeyError])
def test_no_home_directory_falls_back_to_a_private_temp_dir(
    fresh_build_state: Path,
    fake_compiler: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    error: type[Exception],
) -> None:
    # What Path.home() raises with HOME unset and no passwd entry for this user.
    def no_home() -> Path:
        raise error("no home directory")

    monkeypatch.delenv("ZIGGURAT_CACHE_DIR")
    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    assert load_cpu_library() is None  # the stand-in compiler fails, but was run...
    assert attempts(fake_compiler) == 1
    private = tmp_path / "tmp" / f"ziggurat-{os.getuid()}" / "kernels"
    assert len(list(private.glob("*.failed"))) == 1  # ...in the private temp dir


def test_a_temp_dir_open_to_others_is_not_used(
    fresh_build_state: Path, fake_compiler: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Another user could plant a library there for this process to load.
    shared = tmp_path / "tmp" / f"ziggurat-{os.getuid()}"
    shared.mkdir()
    shared.chmod(0o777)
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the cache directory would go")
    monkeypatch.setenv("ZIGGURAT_CACHE_DIR", str(blocker))
    assert load_cpu_library() is None
    assert attempts(fake_compiler) == 1
    assert not any(shared.rglob("*.failed"))
    [fresh] = (tmp_path / "tmp").glob("ziggurat-kernels-*")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
    assert len(list(fresh.glob("*.failed"))) == 1


# Loads the kernels, then a control library built with -ffast-math: the probe must see denormals
# survive the first and flushed after the second (or the probe could not tell).
_DENORMAL_PROBE = """
import ctypes, sys, torch
from ziggurat_core.engine.cpu_kernels import load_cpu_library
def denormal_survives():
    return (torch.tensor(1e-40, dtype=torch.float32) * 1.0).item() != 0.0
assert denormal_survives(), "denormals flushed before anything was loaded"
assert load_cpu_library() is not None, "the kernels did not build"
print("kernels", denormal_survives())
ctypes.CDLL(sys.argv[1])
print("fast-math control", denormal_survives())
"""


def test_loading_the_kernels_keeps_denormals(tmp_path: Path) -> None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler: the kernels cannot be built here")
    source = tmp_path / "control.c"
    source.write_text("int ziggurat_control;\n")
    control = tmp_path / "control.so"
    subprocess.run(
        [compiler, "-ffast-math", "-shared", "-fPIC", str(source), "-o", str(control)],
        check=True, capture_output=True,
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("ZIGGURAT_CPU_KERNELS", "ZIGGURAT_CPU_ISA")}
    result = subprocess.run(
        [sys.executable, "-c", _DENORMAL_PROBE, str(control)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "kernels True" in lines
    if platform.machine().lower() in ("x86_64", "amd64"):
        # crtfastmath.o sets FTZ/DAZ there; other targets may link nothing for -ffast-math.
        assert "fast-math control False" in lines


def test_a_cuda_shaped_run_never_builds_the_cpu_kernels(
    tiny_model_factory: Callable[..., TinyModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ModelRunner on a non-CPU device, built and run through prefill and decode forward passes.
    There is no GPU here: the meta device stands in (tensors that are not on the CPU, as on
    CUDA); only the sampler, which needs a real device, is left out."""
    tiny = tiny_model_factory("llama", "Q8_0")

    def no_build() -> None:
        raise AssertionError("the CPU kernels were loaded on a non-CPU run")

    monkeypatch.setattr(build, "load_cpu_library", no_build)
    monkeypatch.setattr(model_runner, "resolve_device", lambda name: torch.device("meta"))
    monkeypatch.setattr(model_runner, "Sampler", lambda *args, **kwargs: None)
    config = EngineConfig(model=str(tiny.gguf_path), num_kv_blocks=8, block_size=4)
    runner = model_runner.ModelRunner(
        config, load_checkpoint(tiny.gguf_path), max_model_len=32, calibration_token_ids=[1, 2, 3]
    )
    assert runner.device.type == "meta" and runner.cpu_isa is None
    assert runner.quantization == "none"  # auto keeps int8 to the CPU

    for query_len, context_len in ((6, 6), (1, 7)):  # a prefill, then a decode step
        layout = StepLayout([query_len], [context_len], [[0, 1]], config.block_size)
        metadata = runner.attention.prepare(layout, runner.device)
        ids = torch.ones(query_len, dtype=torch.long, device=runner.device)
        positions = torch.arange(context_len - query_len, context_len, device=runner.device)
        with torch.inference_mode():
            hidden = runner.model(ids, positions, runner.kv_caches, runner.attention, metadata)
            logits = runner.model.compute_logits(hidden)
        assert logits.shape == (query_len, tiny.config.vocab_size)
