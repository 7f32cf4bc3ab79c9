"""Pick the attention backend for a device and dtype."""

from __future__ import annotations

import torch

from .base import AttentionBackend
from .torch_backend import PortableAttentionBackend
from .xformers_backend import XFormersAttentionBackend, xformers_unavailable_reason

BACKEND_NAMES = ("auto", "torch", "xformers")


def select_attention_backend(name: str, device: torch.device, dtype: torch.dtype) -> AttentionBackend:
    """'auto': xformers on CUDA with fp16/bf16 when its kernels run there, else torch.

    'torch': always the torch backend. 'xformers': the xformers backend, or ValueError saying
    why it cannot run here.
    """
    if name not in BACKEND_NAMES:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")
    if name == "torch":
        return PortableAttentionBackend()
    device = torch.device(device)
    reason = xformers_unavailable_reason(device, dtype)
    if reason is None:
        return XFormersAttentionBackend()
    if name == "xformers":
        raise ValueError(f"attention backend 'xformers' is unavailable: {reason}")
    return PortableAttentionBackend()
