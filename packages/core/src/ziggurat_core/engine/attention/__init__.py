"""Attention backends. xformers is imported only when its backend is built."""

from .base import AttentionBackend, AttentionLayoutError, StepLayout
from .selector import select_attention_backend
from .torch_backend import PortableAttentionBackend, reference_mask

__all__ = [
    "AttentionBackend",
    "AttentionLayoutError",
    "StepLayout",
    "PortableAttentionBackend",
    "reference_mask",
    "select_attention_backend",
]
