"""Attention backends. xformers is imported only when its backend is built."""

from .base import AttentionBackend, StepLayout
from .selector import select_attention_backend
from .torch_backend import AttentionLayoutError, TorchAttentionBackend, reference_mask

__all__ = [
    "AttentionBackend",
    "AttentionLayoutError",
    "StepLayout",
    "TorchAttentionBackend",
    "reference_mask",
    "select_attention_backend",
]
