"""Shared fixtures for the core tests. Tiny checkpoints are built once per session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
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
