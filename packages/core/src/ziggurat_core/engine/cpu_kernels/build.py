"""Builds the C kernels under `csrc/` into one shared library on first use and loads it.

The library is compiled with the machine's C compiler (`cc`, or $CC) for this CPU
(-march=native, OpenMP) into a per-user cache (ZIGGURAT_CACHE_DIR, else
XDG_CACHE_HOME/ziggurat, else ~/.cache/ziggurat; a private directory under the system's temporary
directory where that one cannot be used) and loaded with ctypes; calls release the GIL.
No compiler, a failed build, or ZIGGURAT_CPU_KERNELS=0 makes `load_cpu_library()` return None and
every caller fall back to torch ops, with one warning in the log. A failed build leaves a
`.failed` file holding the compiler's error beside where the library would be, so later processes
do not compile the same sources with the same compiler and flags again; delete it to retry.

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
import stat
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from ..errors import EngineError

logger = logging.getLogger("ziggurat.engine")

_SOURCES = sorted((Path(__file__).parent / "csrc").glob("*.c"))
_HEADERS = sorted((Path(__file__).parent / "csrc").glob("*.h"))
# The float rules the kernels rely on, named one by one: -ffast-math (or -Ofast,
# -funsafe-math-optimizations) would also link crtfastmath.o, whose constructor switches the whole
# process, torch included, to flush denormals to zero. No -fassociative-math: a reduction the
# compiler regroups at the vector width rounds differently in the avx2 and avx512vnni builds, and
# every variant must compute the same bits (greedy output may not depend on the CPU's vector
# width); sums vectorise through csrc/lane_sum.h instead, which groups them the same way in every
# build. Max reductions vectorise with -ffinite-math-only; -fno-math-errno lets sqrtf inline; -ffp-contract=fast keeps fused multiply-adds (-std=c11 turns them off), the same in
# every x86 SIMD variant (all have FMA).
_FLAGS = [
    "-O3",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-fno-signed-zeros",
    "-ffinite-math-only",
    "-ffp-contract=fast",
    "-fopenmp",
    "-shared",
    "-fPIC",
    "-std=c11",
]
# Longer than any healthy build; a compiler that hangs is remembered as a failed build.
_COMPILE_TIMEOUT_S = 120
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


class CpuIsaError(EngineError, ValueError):
    """ZIGGURAT_CPU_ISA names no variant, or one this CPU cannot run."""


_Wrapper = TypeVar("_Wrapper")
_wrappers: dict[tuple[ctypes.CDLL, Callable[..., object]], object] = {}


def library_wrapper(factory: Callable[[ctypes.CDLL], _Wrapper]) -> _Wrapper | None:
    """`factory(library)` of the library ZIGGURAT_CPU_ISA selects now (see `wrapper_of`), or
    None where the library is unavailable."""
    library = load_cpu_library()
    return None if library is None else wrapper_of(library, factory)


def wrapper_of(library: ctypes.CDLL, factory: Callable[[ctypes.CDLL], _Wrapper]) -> _Wrapper:
    """`factory(library)` made once per loaded library (it sets ctypes signatures). Kernels
    that work on data another kernel prepared (weights packed, layers bound) take it from that
    kernel's library, not from whichever one the environment selects at the time."""
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
        _compiler_version(compiler).encode(),
        " ".join(flags).encode(),
        _cpu_identity().encode(),
    ]:
        digest.update(part + b"\0")
    cache_dir = _cache_dir()
    if cache_dir is None:
        return None
    library_path = cache_dir / f"ziggurat_cpu-{digest.hexdigest()[:16]}.so"
    failure_path = library_path.with_suffix(".failed")
    if not library_path.exists():
        if failure_path.exists():
            logger.warning(
                "building the CPU kernels failed before with this compiler and these flags "
                "(the error is in %s; delete it to retry): falling back to slower torch ops",
                failure_path,
            )
            return None
        try:
            error = _compile(compiler, flags, library_path)
        except OSError as exc:  # the directory, not the build: nothing to remember
            logger.warning("CPU kernels unavailable, falling back to torch ops: %s", exc)
            return None
        if error is not None:
            logger.warning(
                "building the CPU kernels failed, falling back to slower torch ops: %s", error
            )
            _remember_failure(failure_path, compiler, flags, error)
            return None
    try:
        return ctypes.CDLL(str(library_path))
    except OSError as exc:
        logger.warning("CPU kernels unavailable, falling back to torch ops: %s", exc)
        return None


def _compile(compiler: str, flags: list[str], library_path: Path) -> str | None:
    """Builds the library at `library_path`; the compiler's error where that fails, else None.
    Raises OSError where the directory cannot take the file."""
    # Build beside the target and rename: concurrent processes never load a half-written file.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=library_path.parent)
    os.close(fd)
    try:
        try:
            result = subprocess.run(
                [compiler, *flags, *(str(path) for path in _SOURCES), "-o", tmp, "-lm"],
                capture_output=True,
                text=True,
                timeout=_COMPILE_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return f"{compiler} did not finish within {_COMPILE_TIMEOUT_S} s"
        except OSError as exc:
            return f"cannot run {compiler}: {exc}"
        if result.returncode != 0:
            return result.stderr[-2000:] or f"{compiler} exited with status {result.returncode}"
        os.replace(tmp, library_path)
        return None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _remember_failure(failure_path: Path, compiler: str, flags: list[str], error: str) -> None:
    command = " ".join([compiler, *flags, *(path.name for path in _SOURCES)])
    try:
        failure_path.write_text(f"{command}\n\n{error}\n")
    except OSError as exc:  # only costs the next process another attempt
        logger.debug("cannot record the failed build in %s: %s", failure_path, exc)


_compiler_versions: dict[str, str] = {}


def _compiler_version(compiler: str) -> str:
    """The compiler's own description: an upgraded compiler rebuilds (and retries a failure)."""
    if compiler not in _compiler_versions:
        try:
            result = subprocess.run(
                [compiler, "--version"], capture_output=True, text=True, timeout=30, check=False
            )
            _compiler_versions[compiler] = result.stdout
        except (OSError, subprocess.SubprocessError):
            _compiler_versions[compiler] = ""
    return _compiler_versions[compiler]


def _cache_dir() -> Path | None:
    """A writable directory for the built library: the configured cache, else a private one
    under the system's temporary directory; None where neither can be made."""
    configured = _configured_cache_dir()
    if configured is not None:
        try:
            configured.mkdir(parents=True, exist_ok=True)
            if os.access(configured, os.W_OK | os.X_OK):
                return configured
        except OSError:
            pass
    fallback = _private_temp_dir()
    if fallback is None:
        return None
    logger.warning(
        "the kernel cache %s is not writable: building the CPU kernels in %s instead "
        "(set ZIGGURAT_CACHE_DIR to a writable directory to keep them)",
        configured if configured is not None else "(no home directory)",
        fallback,
    )
    return fallback


def _configured_cache_dir() -> Path | None:
    explicit = os.environ.get("ZIGGURAT_CACHE_DIR")
    if explicit:
        return Path(explicit) / "kernels"
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg) / "ziggurat" / "kernels"
    try:
        home = Path.home()  # RuntimeError/KeyError: no HOME and no passwd entry for this user
    except (RuntimeError, KeyError):
        return None
    return home / ".cache" / "ziggurat" / "kernels"


def _private_temp_dir() -> Path | None:
    """<tmp>/ziggurat-<uid>/kernels, owned by this user and closed to others (another user
    could otherwise plant a library this process loads); a fresh directory where that one is
    not ours."""
    base = Path(tempfile.gettempdir()) / f"ziggurat-{os.getuid()}"
    try:
        base.mkdir(mode=0o700, exist_ok=True)
        status = base.lstat()
        if status.st_uid == os.getuid() and stat.S_ISDIR(status.st_mode) and not status.st_mode & 0o077:
            path = base / "kernels"
            path.mkdir(exist_ok=True)
            return path
        return Path(tempfile.mkdtemp(prefix="ziggurat-kernels-"))
    except OSError as exc:
        logger.warning("no writable directory for the CPU kernels (%s)", exc)
        return None


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
