"""Pick the attention backend for a device and dtype."""

from __future__ import annotations

import torch

from .base import AttentionBackend
from .torch_backend import PortableAttentionBackend
from .xformers_backend import (
    PAGED_BLOCK_MULTIPLE,
    XFormersAttentionBackend,
    xformers_unavailable_reason,
)

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


# Tokens per KV block where nothing asks for another size: small blocks waste the least cache
# on partly filled blocks and suit the CPU kernels.
DEFAULT_BLOCK_SIZE = 16


def default_block_size(backend_name: str) -> int:
    """The block size when the setting is left to the engine: xformers (CUDA only) reads the
    paged cache directly only at a multiple of PAGED_BLOCK_MULTIPLE, and otherwise gathers
    every sequence's context per layer and step; every other backend takes 16."""
    return PAGED_BLOCK_MULTIPLE if backend_name == "xformers" else DEFAULT_BLOCK_SIZE
