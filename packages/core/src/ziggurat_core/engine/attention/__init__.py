"""Attention backends. xformers is imported only when its backend is built."""

from .base import AttentionBackend, AttentionLayoutError, StepLayout
from .selector import select_attention_backend
from .torch_backend import TorchAttentionBackend, reference_mask

__all__ = [
    "AttentionBackend",
    "AttentionLayoutError",
    "StepLayout",
    "TorchAttentionBackend",
    "reference_mask",
    "select_attention_backend",
]
