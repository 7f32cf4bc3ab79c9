"""The machine a benchmark figure was measured on: CPU model, the flags that choose kernels, and
the kernel variant in use. Every benchmark prints this beside its figures."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

# The CPU features that decide which kernel variant can run (x86 and Arm names in /proc/cpuinfo).
_RELEVANT_FLAGS = (
    "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8",
    "asimd", "asimddp", "sve", "i8mm",
)


def machine_info() -> dict[str, Any]:
    """CPU model, cores, relevant flags, and the C-kernel variant (ZIGGURAT_CPU_ISA honoured)."""
    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "CPU part") and not model:
                model = value.strip()
            if key in ("flags", "Features"):
                flags = set(value.split())
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu_model": model or platform.processor() or platform.machine(),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "cpu_flags": [flag for flag in _RELEVANT_FLAGS if flag in flags],
        "forced_isa": os.environ.get("ZIGGURAT_CPU_ISA"),
    }
    try:
        from ziggurat_core.engine.cpu_kernels import cpu_isa

        info["cpu_isa"] = cpu_isa()
    except ImportError:  # a client-only environment
        info["cpu_isa"] = None
    return info
