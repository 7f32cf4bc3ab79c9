"""Building blocks of the decoder models."""

from .activation import SiluAndMul
from .linear import Embedding, Linear, PackFormat, pack_linears
from .rmsnorm import RMSNorm
from .rotary import RopeScalingError, RotaryEmbedding, apply_rotary, rope_inv_freq

__all__ = [
    "Embedding",
    "Linear",
    "PackFormat",
    "RMSNorm",
    "RopeScalingError",
    "RotaryEmbedding",
    "SiluAndMul",
    "apply_rotary",
    "pack_linears",
    "rope_inv_freq",
]
