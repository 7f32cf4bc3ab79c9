"""Shared fixtures for the core tests. Tiny checkpoints are built once per session."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from arm_qemu import install_arm_toolchain
from fixtures_models import TinyModel, make_tiny_llama

TinyModelFactory = Callable[..., TinyModel]


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory: pytest.TempPathFactory) -> TinyModelFactory:
    """make(arch="llama" | "qwen2", quant=None | "Q8_0" | "Q4_0" | ...) -> TinyModel, cached."""
    root: Path = tmp_path_factory.mktemp("tiny_models")
    built: dict[tuple[str, str | None], TinyModel] = {}

    def make(arch: str = "llama", quant: str | None = None) -> TinyModel:
        key = (arch, quant)
        if key not in built:
            built[key] = make_tiny_llama(root, arch=arch, quant=quant)
        return built[key]

    return make


@pytest.fixture(scope="session")
def tiny_llama(tiny_model_factory: TinyModelFactory) -> TinyModel:
    """Llama, GQA 4/2 heads, llama3 RoPE scaling, untied embeddings, F32 GGUF + HF folder."""
    return tiny_model_factory("llama")


@pytest.fixture(scope="session")
def tiny_qwen2(tiny_model_factory: TinyModelFactory) -> TinyModel:
    """Qwen2, GQA 4/2 heads, q/k/v biases, tied embeddings, F32 GGUF + HF folder."""
    return tiny_model_factory("qwen2")


@pytest.fixture(scope="session")
def cpu_kernels() -> None:
    """For tests of behaviour that exists only with the C kernels loaded (a kernel's own output,
    int8 chosen by quantization="auto", a forced ZIGGURAT_CPU_ISA). Skips, saying why, where the
    kernels are turned off or cannot be built; a compiler that is present but fails to build
    them is not skipped here, so the test that loads them fails."""
    if os.environ.get("ZIGGURAT_CPU_KERNELS", "1") == "0":
        pytest.skip("the CPU kernels are turned off (ZIGGURAT_CPU_KERNELS=0)")
    if not (os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler on this machine: the CPU kernels cannot be built")


@pytest.fixture(scope="session")
def arm_toolchain() -> None:
    """aarch64-linux-gnu-gcc and qemu-aarch64 on PATH (arm_qemu.py), installed if missing."""
    install_arm_toolchain()
