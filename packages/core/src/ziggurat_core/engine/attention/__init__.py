"""Attention backends. xformers is imported only when its backend is built."""

from .base import AttentionBackend, AttentionLayoutError, StepLayout
from .selector import select_attention_backend
from .torch_backend import PortableAttentionBackend, reference_mask

__all__ = [
    "AttentionBackend",
    "AttentionLayoutError",
    "PortableAttentionBackend",
    "StepLayout",
    "reference_mask",
    "select_attention_backend",
]
