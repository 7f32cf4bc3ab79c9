"""`Checkpoint`: what a loaded checkpoint offers the engine, whatever its file format."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..config import ModelConfig
from .errors import CheckpointError


class Checkpoint(ABC):
    """A model on disk: its hyper-parameters and weights (the tokenizer, chat templates included,
    is read by `Tokenizer.from_hf_dir` or from `gguf_metadata()`).

    `weights()` yields Hugging Face parameter names and layouts (e.g.
    `model.layers.0.self_attn.q_proj.weight` as [out, in]) in `dtype`, whatever the file format,
    so the model never sees format details. It reads the file again on every call.
    """

    format: str  # "gguf" | "safetensors"

    def __init__(self, path: Path, model_config: ModelConfig, dtype: torch.dtype) -> None:
        self.path = path
        self.model_config = model_config
        self.dtype = dtype

    @abstractmethod
    def weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(Hugging Face name, tensor in `dtype`) for every weight in the checkpoint."""

    @property
    def weights_quantized(self) -> bool:
        """Whether the file stores the projection weights quantised (int4/int8 blocks), i.e. the
        model was published to run at reduced precision."""
        return False

    def gguf_metadata(self) -> dict[str, Any]:
        """Every GGUF key/value as plain Python values; only GGUF checkpoints have them."""
        raise CheckpointError(f"{self.path}: a {self.format} checkpoint has no GGUF metadata")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={str(self.path)!r}, architecture={self.model_config.architecture!r})"
