"""Rotary position embeddings (NeoX / Hugging Face "rotate half" style) with a precomputed
cos/sin table indexed by token position.

Supported `rope_scaling` (ModelConfig, Hugging Face form):
- None: plain RoPE with `theta`.
- {"rope_type": "linear", "factor": f}: every frequency divided by f.
- {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
   "original_max_position_embeddings"}: Llama 3.1's wavelength-dependent scaling.
- {"rope_type": "freq_factors", "freq_factors": [...]}: one divisor per frequency, as llama.cpp
  stores llama3 scaling in GGUF files (the `rope_freqs` tensor).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..cpu_kernels.elementwise import ElementwiseKernels, load_elementwise_kernels


class RopeScalingError(ValueError):
    """rope_scaling names a type we do not implement or lacks a parameter."""


def rope_inv_freq(head_dim: int, theta: float, rope_scaling: dict[str, Any] | None) -> torch.Tensor:
    """Angular frequency of each rotated pair, float32 [head_dim // 2]."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    inv_freq = 1.0 / (theta**exponents)
    if rope_scaling is None:
        return inv_freq
    rope_type = rope_scaling.get("rope_type", rope_scaling.get("type", "default"))
    try:
        if rope_type == "default":
            return inv_freq
        if rope_type == "linear":
            return inv_freq / float(rope_scaling["factor"])
        if rope_type == "llama3":
            return _llama3_inv_freq(inv_freq, rope_scaling)
        if rope_type == "freq_factors":
            factors = torch.tensor(rope_scaling["freq_factors"], dtype=torch.float32)
            if factors.shape != inv_freq.shape:
                raise RopeScalingError(
                    f"{factors.numel()} RoPE freq_factors for {inv_freq.numel()} frequencies"
                )
            return inv_freq / factors
    except KeyError as exc:
        raise RopeScalingError(f"rope_scaling {rope_type!r} lacks {exc.args[0]!r}") from exc
    raise RopeScalingError(f"unsupported rope_scaling type {rope_type!r}")


def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: dict[str, Any]) -> torch.Tensor:
    """Long wavelengths (beyond the original context / low_freq_factor) are slowed down by
    `factor`, short ones (below original context / high_freq_factor) are kept, and the band in
    between blends the two linearly in 1/wavelength."""
    factor = float(scaling["factor"])
    low = float(scaling["low_freq_factor"])
    high = float(scaling["high_freq_factor"])
    original_context = float(scaling["original_max_position_embeddings"])
    wavelength = 2 * math.pi / inv_freq
    scaled = torch.where(wavelength > original_context / low, inv_freq / factor, inv_freq)
    blend = (original_context / wavelength - low) / (high - low)
    blended = (1 - blend) * scaled / factor + blend * scaled
    in_band = (wavelength >= original_context / high) & (wavelength <= original_context / low)
    return torch.where(in_band, blended, scaled)


class RotaryEmbedding(nn.Module):
    """cos/sin tables [max_positions, head_dim // 2] built once on the default device;
    `cos_sin` looks up the rows of a step's positions."""

    cos_cache: torch.Tensor
    sin_cache: torch.Tensor

    def __init__(
        self, head_dim: int, max_positions: int, theta: float, rope_scaling: dict[str, Any] | None
    ) -> None:
        super().__init__()
        if head_dim % 2:
            raise RopeScalingError(f"RoPE needs an even head_dim, got {head_dim}")
        self.head_dim = head_dim
        self.max_positions = max_positions
        self.theta = theta
        self.rope_scaling = rope_scaling
        self.build_tables(None)

    def build_tables(self, device: torch.device | None) -> None:
        """(Re)compute the float32 tables on `device` (None: the default device). A model built
        on `meta` calls this once it has a real device: the tables are derived from the config,
        never read from a checkpoint."""
        inv_freq = rope_inv_freq(self.head_dim, self.theta, self.rope_scaling).to(device)
        positions = torch.arange(self.max_positions, dtype=torch.float32, device=device)
        angles = torch.outer(positions, inv_freq.to(torch.float32))
        # Not persistent: derived from the config, never part of a checkpoint.
        self.register_buffer("cos_cache", angles.cos(), persistent=False)
        self.register_buffer("sin_cache", angles.sin(), persistent=False)

    def cos_sin(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [num_tokens, 1, head_dim // 2] for `positions`, ready to broadcast over heads."""
        cos = self.cos_cache.index_select(0, positions).unsqueeze(1)
        sin = self.sin_cache.index_select(0, positions).unsqueeze(1)
        return cos.to(dtype), sin.to(dtype)


def apply_rotary(
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    kernels: Callable[[], ElementwiseKernels | None] = load_elementwise_kernels,
) -> torch.Tensor:
    """Rotate [num_tokens, heads, head_dim]: the first half of each head pairs with the second.
    `kernels` gives the C kernels for a CPU float32 `x` (a layer passes the ones it keeps, see
    `layers/kernels.py`; by default those ZIGGURAT_CPU_ISA selects now)."""
    fitting = (
        x.dtype == torch.float32
        and x.device.type == "cpu"
        and x.dim() == 3
        and x.stride(2) == 1
        and x.stride(1) == x.shape[2]
        and cos.is_contiguous()
        and sin.is_contiguous()
        and cos.dtype == torch.float32
        and sin.dtype == torch.float32
        and cos.numel() == sin.numel() == x.shape[0] * x.shape[2] // 2
    )
    # Checked before loading: a CUDA run never builds the CPU kernels.
    loaded = kernels() if fitting else None
    if loaded is not None:
        return loaded.rotary(x, cos, sin)
    first, second = x.chunk(2, dim=-1)
    return torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1)
