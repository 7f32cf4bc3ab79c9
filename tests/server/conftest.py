"""Shared fixtures: a tiny random model and one real server process per test session."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tokenizers import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))
from fixtures_models import TinyModel, make_tiny_llama  # noqa: E402
from server_helpers import TINY_NUM_KV_BLOCKS  # noqa: E402
from server_process import ServerProcess  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-model"), arch="llama")


@pytest.fixture(scope="session")
def tiny_server(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("server-logs"),
                           "--model", str(tiny_model.gguf_path),
                           "--served-model-name", "tiny",
                           "--num-kv-blocks", str(TINY_NUM_KV_BLOCKS),
                           "--max-num-seqs", "64")
    server.wait_ready()
    yield server
    server.stop()


@pytest.fixture()
def client(tiny_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=tiny_server.base_url, timeout=60.0) as http:
        yield http


@pytest.fixture(scope="session")
def reference_tokenizer(tiny_model: TinyModel) -> Tokenizer:
    """The tiny model's tokenizer.json read directly: an independent token count."""
    return Tokenizer.from_file(str(tiny_model.tokenizer_path))

