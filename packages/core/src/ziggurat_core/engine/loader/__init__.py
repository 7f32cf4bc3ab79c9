"""Checkpoint loading: GGUF files and Hugging Face safetensors folders -> `Checkpoint`."""

from .checkpoint import Checkpoint
from .errors import CheckpointError
from .gguf_reader import GGUFCheckpoint
from .loading import CheckpointNotFoundError, load_checkpoint
from .safetensors_reader import SafetensorsCheckpoint

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "CheckpointNotFoundError",
    "GGUFCheckpoint",
    "SafetensorsCheckpoint",
    "load_checkpoint",
]
