"""Building blocks of the decoder models."""

from .activation import SiluAndMul
from .linear import Embedding, Linear, prepack_cpu_linears
from .rmsnorm import RMSNorm
from .rotary import RopeScalingError, RotaryEmbedding, apply_rotary, rope_inv_freq

__all__ = [
    "Embedding",
    "Linear",
    "RMSNorm",
    "RopeScalingError",
    "RotaryEmbedding",
    "SiluAndMul",
    "apply_rotary",
    "prepack_cpu_linears",
    "rope_inv_freq",
]
