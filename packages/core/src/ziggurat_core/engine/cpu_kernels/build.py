"""Builds the C kernels under `csrc/` into one shared library on first use and loads it.

The library is compiled with the machine's C compiler (`cc`, or $CC) for this CPU
(-march=native, OpenMP) into a per-user cache (ZIGGURAT_CACHE_DIR, else
XDG_CACHE_HOME/ziggurat, else ~/.cache/ziggurat) and loaded with ctypes; calls release the GIL.
No compiler, a failed build, or ZIGGURAT_CPU_KERNELS=0 makes `load_cpu_library()` return None and
every caller fall back to torch ops, with one warning in the log.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

logger = logging.getLogger("ziggurat.engine")

_SOURCES = sorted((Path(__file__).parent / "csrc").glob("*.c"))
_FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp", "-shared", "-fPIC", "-std=c11"]
_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL | None] = {}  # "library" -> the loaded one, or None after a failure


class KernelError(RuntimeError):
    """A kernel was handed tensors it cannot read (dtype, layout or device)."""


_Wrapper = TypeVar("_Wrapper")
_wrappers: dict[tuple[ctypes.CDLL, Callable[..., object]], object] = {}


def library_wrapper(factory: Callable[[ctypes.CDLL], _Wrapper]) -> _Wrapper | None:
    """`factory(library)` made once per loaded library (it sets ctypes signatures), or None
    where the library is unavailable."""
    library = load_cpu_library()
    if library is None:
        return None
    key = (library, factory)
    if key not in _wrappers:
        _wrappers[key] = factory(library)
    return _wrappers[key]  # type: ignore[return-value]


def check_float_vectors(op: str, vectors: tuple[tuple[str, torch.Tensor | None, int], ...]) -> None:
    """Raise KernelError unless each (name, tensor, size) is None or `size` contiguous float32s."""
    for name, tensor, size in vectors:
        if tensor is not None and (
            tensor.dtype != torch.float32 or tensor.numel() != size or not tensor.is_contiguous()
        ):
            raise KernelError(f"{op}: {name} must be {size} contiguous float32 values")


def load_cpu_library() -> ctypes.CDLL | None:
    """The compiled kernels, built once per source/compiler/CPU; None where unavailable."""
    if os.environ.get("ZIGGURAT_CPU_KERNELS", "1") == "0":
        return None
    with _lock:
        if "library" not in _loaded:
            _loaded["library"] = _build_and_load()
        return _loaded["library"]


def _build_and_load() -> ctypes.CDLL | None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        logger.warning("no C compiler found: CPU kernels fall back to slower torch ops")
        return None
    digest = hashlib.sha256()
    for part in [
        *(path.read_bytes() for path in _SOURCES),
        compiler.encode(),
        " ".join(_FLAGS).encode(),
        _cpu_identity().encode(),
    ]:
        digest.update(part + b"\0")
    library_path = _cache_dir() / f"ziggurat_cpu-{digest.hexdigest()[:16]}.so"
    try:
        if not library_path.exists() and not _compile(compiler, library_path):
            return None
        return ctypes.CDLL(str(library_path))
    except (OSError, subprocess.SubprocessError) as exc:
        logger.warning("CPU kernels unavailable, falling back to torch ops: %s", exc)
        return None


def _compile(compiler: str, library_path: Path) -> bool:
    library_path.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: concurrent processes never load a half-written file.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=library_path.parent)
    os.close(fd)
    try:
        result = subprocess.run(
            [compiler, *_FLAGS, *(str(path) for path in _SOURCES), "-o", tmp, "-lm"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            logger.warning(
                "building the CPU kernels failed, falling back to torch ops: %s",
                result.stderr[-2000:],
            )
            return False
        os.replace(tmp, library_path)
        return True
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _cache_dir() -> Path:
    explicit = os.environ.get("ZIGGURAT_CACHE_DIR")
    if explicit:
        return Path(explicit) / "kernels"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "ziggurat" / "kernels"


def _cpu_identity() -> str:
    """What -march=native depends on: a cache shared between machines must not mix builds."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features", "model name")):
                flags += line
                if line.startswith(("flags", "Features")):
                    break
    except OSError:
        pass
    return f"{platform.machine()}|{flags}"
