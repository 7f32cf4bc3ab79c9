"""Loading the C paged-decode attention kernel (cpu_kernels/paged_decode.py, csrc/paged_decode.c):
turned off by the environment; a compiler that fails, is missing or absent gives the torch path
with one warning and leaves no file behind; the build is cached on disk and reused, by default
under XDG_CACHE_HOME; builds without F16C/AVX-512 or without _Float16 still give a float32
kernel, and a float16 one exactly when the build has it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from paged_decode_helpers import (
    CACHE_DTYPES,
    SENTINEL,
    TOL,
    CountingKernel,
    decode_inputs,
    dense_reference,
    loaded_kernel,
    make_step,
    mixed_seqs,
    run_backend,
    write_new_tokens,
)
from ziggurat_core.engine.attention import torch_backend
from ziggurat_core.engine.cpu_kernels import (
    KernelError,
    PagedAttentionKernel,
    load_paged_attention_kernel,
)
from ziggurat_core.engine.cpu_kernels import build as cpu_kernel


@pytest.fixture(scope="module")
def kernel(cpu_kernels: None) -> PagedAttentionKernel:
    return loaded_kernel()


@pytest.fixture
def fresh_kernel_state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No memoised kernel and an empty cache dir (both restored afterwards); returns the dir."""
    monkeypatch.setattr(cpu_kernel, "_loaded", {})
    monkeypatch.delenv("ZIGGURAT_CPU_KERNELS", raising=False)
    # These tests fake or hide the compiler, whose macros decide which variants the CPU runs: a
    # variant forced for the whole run would be refused there, so they build the native one.
    monkeypatch.delenv("ZIGGURAT_CPU_ISA", raising=False)
    monkeypatch.setenv("ZIGGURAT_CACHE_DIR", str(tmp_path))
    return tmp_path / "kernels"


def test_disabled_by_environment(
    kernel: PagedAttentionKernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load_paged_attention_kernel() is kernel  # memoised
    monkeypatch.setenv("ZIGGURAT_CPU_KERNELS", "0")
    assert load_paged_attention_kernel() is None  # even with a kernel memoised

    step = make_step(mixed_seqs(16), block_size=16, num_heads=4, num_kv_heads=2, head_dim=32)
    out, _ = run_backend(step, 0.2, decode_kernel=True)
    torch.testing.assert_close(out.double(), dense_reference(step, 0.2), rtol=TOL, atol=TOL)


@pytest.mark.parametrize("compiler", ["false", "missing", "none"])
def test_unbuildable_kernel_falls_back_to_torch_with_one_warning(
    fresh_kernel_state: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    compiler: str,
) -> None:
    if compiler == "false":  # a compiler that fails
        false = shutil.which("false")
        assert false is not None
        monkeypatch.setenv("CC", false)
    elif compiler == "missing":  # $CC names no program
        monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    else:  # no compiler at all
        monkeypatch.delenv("CC", raising=False)
        monkeypatch.setattr(cpu_kernel.shutil, "which", lambda name: None)
    caplog.set_level(logging.WARNING, logger="ziggurat.engine")

    assert load_paged_attention_kernel() is None
    assert load_paged_attention_kernel() is None  # memoised: no second attempt, no second warning
    warnings = [
        r for r in caplog.records if r.name == "ziggurat.engine" and r.levelno == logging.WARNING
    ]
    assert len(warnings) == 1
    assert "torch ops" in warnings[0].getMessage()

    step = make_step(mixed_seqs(16), block_size=16, num_heads=6, num_kv_heads=2, head_dim=64)
    out, _ = run_backend(step, 0.125, decode_kernel=True)
    torch.testing.assert_close(out.double(), dense_reference(step, 0.125), rtol=TOL, atol=TOL)


@pytest.mark.parametrize("compiler", ["false", "missing"])
def test_failed_build_leaves_no_file_behind(
    fresh_kernel_state: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, compiler: str
) -> None:
    false = shutil.which("false")
    assert false is not None
    monkeypatch.setenv("CC", false if compiler == "false" else str(tmp_path / "no-such-compiler"))
    assert load_paged_attention_kernel() is None
    assert fresh_kernel_state.is_dir()  # the build was attempted there
    # No library and no half-written temporary file: only the record of the failure.
    assert [path.suffix for path in fresh_kernel_state.iterdir()] == [".failed"]


def test_build_is_cached_on_disk_and_reused(
    fresh_kernel_state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = load_paged_attention_kernel()
    assert built is not None
    files = list(fresh_kernel_state.iterdir())
    assert len(files) == 1 and files[0].suffix == ".so", files
    mtime = files[0].stat().st_mtime_ns

    def no_compiling(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"the kernel was rebuilt: {args}")

    monkeypatch.setattr(cpu_kernel, "_loaded", {})  # as in a new process
    monkeypatch.setattr(cpu_kernel.subprocess, "run", no_compiling)
    reloaded = load_paged_attention_kernel()
    assert reloaded is not None and reloaded is not built
    assert list(fresh_kernel_state.iterdir()) == files
    assert files[0].stat().st_mtime_ns == mtime

    step = make_step(
        [(9, 1), (0, 3), (33, 1)], block_size=4, num_heads=4, num_kv_heads=4, head_dim=16
    )
    write_new_tokens(step)
    tables, lens, rows = decode_inputs(step)
    out = torch.full(step.query.shape, SENTINEL)
    reloaded(step.query, step.kv_cache, tables, lens, rows, out, 0.25)
    torch.testing.assert_close(
        out[rows].double(), dense_reference(step, 0.25)[rows], rtol=TOL, atol=TOL
    )


def test_cache_dir_defaults_to_xdg_cache_home(
    fresh_kernel_state: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    xdg = tmp_path / "xdg"
    monkeypatch.delenv("ZIGGURAT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    monkeypatch.setenv("CC", "cc")  # never run: the build below is simulated
    monkeypatch.setattr(cpu_kernel.subprocess, "run", _failing_build)
    assert load_paged_attention_kernel() is None  # the build is attempted in the XDG location
    assert (xdg / "ziggurat" / "kernels").is_dir()
    assert not fresh_kernel_state.exists()


def _failing_build(*args: Any, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.CompletedProcess(args, 1, "", "simulated compiler failure")


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 compiler flags")
@pytest.mark.parametrize(
    ("flags", "has_half"),
    [
        # No F16C or AVX-512: halves converted one at a time through the compiler's _Float16.
        (["-mno-avx512f", "-mno-f16c"], True),
        # As a compiler without _Float16 would see it: no float16 entry point at all.
        (["-mno-avx512f", "-mno-f16c", "-U__FLT16_MAX__"], False),
    ],
    ids=["scalar-float16", "no-float16"],
)
def test_kernel_builds_with_and_without_half_support(
    kernel: PagedAttentionKernel,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    flags: list[str],
    has_half: bool,
) -> None:
    """The C file built without F16C/AVX-512 (and without _Float16): the float32 kernel always
    works, the float16 one exists exactly when the build says so, and the backend takes the
    torch path for a float16 cache the build cannot read."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    assert compiler is not None  # the `kernel` fixture skips without one
    if has_half:
        macros = subprocess.run(
            [compiler, *flags, "-dM", "-E", "-"], input="", capture_output=True, text=True
        )
        if "__FLT16_MAX__" not in macros.stdout:
            pytest.skip("this compiler has no _Float16")
    csrc = Path(cpu_kernel.__file__).parent / "csrc"
    sources = [str(csrc / "paged_decode.c"), str(csrc / "paged_prefill.c")]
    library = tmp_path / "paged_decode.so"
    command = [compiler, *cpu_kernel._FLAGS, *flags, *sources, "-o", str(library), "-lm"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    built = PagedAttentionKernel(ctypes.CDLL(str(library)))
    assert built.supports_float16 is has_half
    assert built.cache_dtypes == ((torch.float32, torch.float16) if has_half else (torch.float32,))

    for cache_dtype in CACHE_DTYPES:
        step = make_step(
            mixed_seqs(16),
            block_size=16,
            num_heads=6,
            num_kv_heads=2,
            head_dim=64,
            cache_dtype=cache_dtype,
            seed=17,
        )
        write_new_tokens(step)
        tables, lens, rows = decode_inputs(step)
        out = torch.full(step.query.shape, SENTINEL)
        if cache_dtype in built.cache_dtypes:
            built(step.query, step.kv_cache, tables, lens, rows, out, 0.125)
            expected = dense_reference(step, 0.125)[rows]
            torch.testing.assert_close(out[rows].double(), expected, rtol=TOL, atol=TOL)
        else:
            with pytest.raises(KernelError, match="kv_cache"):
                built(step.query, step.kv_cache, tables, lens, rows, out, 0.125)
            assert (out == SENTINEL).all()

    counting = CountingKernel(built)
    monkeypatch.setattr(torch_backend, "load_paged_attention_kernel", lambda: counting)
    step = make_step(
        mixed_seqs(16),
        block_size=16,
        num_heads=6,
        num_kv_heads=2,
        head_dim=64,
        cache_dtype=torch.float16,
    )
    out, _ = run_backend(step, 0.125, decode_kernel=True)
    assert counting.calls == (1 if has_half else 0)
    torch.testing.assert_close(out.double(), dense_reference(step, 0.125), rtol=TOL, atol=TOL)
