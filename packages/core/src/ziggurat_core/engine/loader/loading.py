"""`load_checkpoint`: pick the reader for a path (a .gguf file or a Hugging Face folder)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import ModelNotFoundError
from .checkpoint import Checkpoint
from .errors import CheckpointError
from .gguf_reader import GGUFCheckpoint, is_gguf_file
from .safetensors_reader import SafetensorsCheckpoint


class CheckpointNotFoundError(CheckpointError, ModelNotFoundError):
    """The path does not exist (both a CheckpointError and the engine's ModelNotFoundError)."""


def load_checkpoint(path: str | os.PathLike[str], dtype: torch.dtype = torch.float32) -> Checkpoint:
    """Open a checkpoint and read its configuration; weights are read later by `weights()`."""
    checkpoint_path = Path(path).expanduser()
    if not checkpoint_path.exists():
        raise CheckpointNotFoundError(f"{checkpoint_path}: no such file or folder")
    if checkpoint_path.is_dir():
        if not (checkpoint_path / "config.json").is_file():
            raise CheckpointError(f"{checkpoint_path}: a Hugging Face model folder needs config.json")
        return SafetensorsCheckpoint(checkpoint_path, dtype)
    if not is_gguf_file(checkpoint_path):
        raise CheckpointError(
            f"{checkpoint_path}: not a GGUF file (give a .gguf file or a Hugging Face model folder)"
        )
    return GGUFCheckpoint(checkpoint_path, dtype)
