"""Builds the C kernels under `csrc/` into one shared library on first use and loads it.

The library is compiled with the machine's C compiler (`cc`, or $CC) for this CPU
(-march=native, OpenMP) into a per-user cache (ZIGGURAT_CACHE_DIR, else
XDG_CACHE_HOME/ziggurat, else ~/.cache/ziggurat) and loaded with ctypes; calls release the GIL.
No compiler, a failed build, or ZIGGURAT_CPU_KERNELS=0 makes `load_cpu_library()` return None and
every caller fall back to torch ops, with one warning in the log.

Kernels with per-instruction-set code (`csrc/isa.h`) are built for the best variant the CPU has
(`native_isa()`); ZIGGURAT_CPU_ISA=avx512vnni|avx2|neon|scalar forces a variant at or below it,
so tests and benchmarks on a bigger CPU exercise the smaller paths too. `cpu_isa()` names the
variant the loaded library runs.
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
_HEADERS = sorted((Path(__file__).parent / "csrc").glob("*.h"))
_FLAGS = ["-O3", "-fopenmp", "-shared", "-fPIC", "-std=c11"]
ISAS = ("avx512vnni", "avx2", "neon", "scalar")
# The variants a CPU whose best is the key can run, best first (one architecture each).
_RUNNABLE = {
    "avx512vnni": ("avx512vnni", "avx2", "scalar"),
    "avx2": ("avx2", "scalar"),
    "neon": ("neon", "scalar"),
    "scalar": ("scalar",),
}
# Flags that lower a native build to a forced variant (isa.h reads the resulting macros);
# -mno-avx512f drops every AVX-512 extension with it.
_LOWERING_FLAGS = {"avx512vnni": [], "avx2": ["-mno-avx512f"], "neon": [], "scalar": []}
_lock = threading.Lock()
# "library:<isa>" -> the loaded one, or None after a failure
_loaded: dict[str, ctypes.CDLL | None] = {}


class KernelError(RuntimeError):
    """A kernel was handed tensors it cannot read (dtype, layout or device)."""


class CpuIsaError(ValueError):
    """ZIGGURAT_CPU_ISA names no variant, or one this CPU cannot run."""


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
    """The compiled kernels, built once per source/compiler/CPU/variant; None where unavailable.

    Raises CpuIsaError where ZIGGURAT_CPU_ISA asks for a variant this CPU cannot run."""
    if os.environ.get("ZIGGURAT_CPU_KERNELS", "1") == "0":
        return None
    with _lock:
        compiler = _compiler()
        isa = None if compiler is None else _requested_isa(compiler)
        key = f"library:{isa}"
        if key not in _loaded:
            _loaded[key] = (
                None if compiler is None or isa is None else _build_and_load(compiler, isa)
            )
        return _loaded[key]


def cpu_isa() -> str | None:
    """The instruction-set variant of the loaded kernels (one of ISAS); None without them."""
    library = load_cpu_library()
    if library is None:
        return None
    name = library.ziggurat_cpu_isa
    name.restype = ctypes.c_char_p
    return str(name().decode())


def native_isa() -> str | None:
    """The best variant this CPU and compiler can build; None without a compiler."""
    compiler = _compiler()
    return None if compiler is None else _native_isa(compiler)


def _compiler() -> str | None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None and "no-compiler" not in _loaded:
        _loaded["no-compiler"] = None
        logger.warning("no C compiler found: CPU kernels fall back to slower torch ops")
    return compiler


def _requested_isa(compiler: str) -> str:
    native = _native_isa(compiler)
    requested = os.environ.get("ZIGGURAT_CPU_ISA", "").strip().lower() or "auto"
    if requested == "auto":
        return native
    if requested not in ISAS:
        raise CpuIsaError(f"ZIGGURAT_CPU_ISA={requested!r} is not one of auto, {', '.join(ISAS)}")
    if requested not in _RUNNABLE[native]:
        raise CpuIsaError(
            f"ZIGGURAT_CPU_ISA={requested} needs an instruction set this CPU lacks: it runs "
            f"{', '.join(_RUNNABLE[native])}"
        )
    return requested


_native_isas: dict[str, str] = {}


def _native_isa(compiler: str) -> str:
    """What isa.h selects for -march=native, read from the compiler's predefined macros."""
    if compiler not in _native_isas:
        macros = _predefined_macros(compiler, _arch_flags())
        if "__AVX512F__" in macros and "__AVX512BW__" in macros and "__AVX512VNNI__" in macros:
            isa = "avx512vnni"
        elif "__AVX2__" in macros and "__FMA__" in macros and "__F16C__" in macros:
            isa = "avx2"
        elif "__aarch64__" in macros and "__ARM_NEON" in macros:
            isa = "neon"
        else:
            isa = "scalar"
        _native_isas[compiler] = isa
    return _native_isas[compiler]


def _arch_flags() -> list[str]:
    # GCC on Arm spells "this CPU" -mcpu=native; -march=native elsewhere.
    return (
        ["-mcpu=native"]
        if platform.machine().lower() in ("aarch64", "arm64")
        else ["-march=native"]
    )


def _isa_flags(isa: str) -> list[str]:
    if isa == "scalar":
        return ["-DZIGGURAT_ISA_SCALAR"]  # the portable build: no target beyond the baseline
    return [*_arch_flags(), *_LOWERING_FLAGS[isa]]


def _predefined_macros(compiler: str, flags: list[str]) -> set[str]:
    try:
        result = subprocess.run(
            [compiler, *flags, "-dM", "-E", "-x", "c", os.devnull],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return set()
    return {line.split()[1] for line in result.stdout.splitlines() if line.startswith("#define ")}


def _build_and_load(compiler: str, isa: str) -> ctypes.CDLL | None:
    flags = [*_FLAGS, *_isa_flags(isa)]
    digest = hashlib.sha256()
    for part in [
        *(path.read_bytes() for path in _SOURCES),
        *(path.read_bytes() for path in _HEADERS),
        compiler.encode(),
        " ".join(flags).encode(),
        _cpu_identity().encode(),
    ]:
        digest.update(part + b"\0")
    library_path = _cache_dir() / f"ziggurat_cpu-{digest.hexdigest()[:16]}.so"
    try:
        if not library_path.exists() and not _compile(compiler, flags, library_path):
            return None
        return ctypes.CDLL(str(library_path))
    except (OSError, subprocess.SubprocessError) as exc:
        logger.warning("CPU kernels unavailable, falling back to torch ops: %s", exc)
        return None


def _compile(compiler: str, flags: list[str], library_path: Path) -> bool:
    library_path.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: concurrent processes never load a half-written file.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=library_path.parent)
    os.close(fd)
    try:
        result = subprocess.run(
            [compiler, *flags, *(str(path) for path in _SOURCES), "-o", tmp, "-lm"],
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
