"""AArch64 cross-compiler and qemu for the kernel tests that run the NEON builds on x86:
the toolchain (installed through apt-get where missing), the library's compiler flags, the
target flags per variant, and running a cross-built driver under qemu."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from ziggurat_core.engine.cpu_kernels import build

CSRC = Path(build.__file__).parent / "csrc"
CC = "aarch64-linux-gnu-gcc"
NM = "aarch64-linux-gnu-nm"
QEMU = "qemu-aarch64"
SYSROOT = "/usr/aarch64-linux-gnu"
# The C library's headers too: apt-get without recommends installs the compiler without them.
PACKAGES = ("gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross", "qemu-user")
# A header the compiler needs from libc6-dev-arm64-cross (glibc's own, included by stdio.h).
LIBC_HEADER = Path(SYSROOT) / "include" / "bits" / "wordsize.h"
# Target flags per variant, in place of build.py's -mcpu=native: an AArch64 CPU with the
# dot-product extension, a baseline ARMv8 CPU (NEON without sdot), and the forced scalar build.
TARGETS = {
    "sdot": ["-march=armv8.2-a+dotprod"],
    "neon": ["-march=armv8-a"],
    "scalar": ["-march=armv8-a", "-DZIGGURAT_ISA_SCALAR"],
}
# qemu's default CPU model ("max") has every extension, sdot included.
QEMU_TIMEOUT_S = 300


def run_command(command: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def install_arm_toolchain() -> None:
    """aarch64-linux-gnu-gcc, its C library headers and qemu-aarch64, installed through apt-get
    if missing."""
    if _toolchain_present():
        return
    if shutil.which("apt-get") is None:
        pytest.skip(f"{CC} / {QEMU} missing and no apt-get to install {' '.join(PACKAGES)}")
    if os.geteuid() != 0:
        pytest.skip(f"{CC} / {QEMU} missing and installing {' '.join(PACKAGES)} needs root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
    result = subprocess.run(install, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:  # stale or empty package lists: refresh them once
        subprocess.run(["apt-get", "update"], capture_output=True, env=env, check=False)
        result = subprocess.run(install, capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, f"apt-get could not install {PACKAGES}:\n{result.stderr[-3000:]}"
    assert _toolchain_present(), result.stdout[-3000:]


def _toolchain_present() -> bool:
    return all(shutil.which(tool) for tool in (CC, NM, QEMU)) and LIBC_HEADER.is_file()


def library_flags() -> list[str]:
    """The flags build.py compiles the kernels with (its target flags aside)."""
    return list(build._FLAGS)


def run_driver(driver: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_command([QEMU, "-L", SYSROOT, str(driver), *args], timeout=QEMU_TIMEOUT_S)
