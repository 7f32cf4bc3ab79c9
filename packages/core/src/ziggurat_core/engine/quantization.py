"""int8 (W8A8) quantisation of a loaded model's Linear layers, with activation smoothing.

Per-token int8 activations lose precision when a few input channels are much larger than the
rest (RMSNorm gains and the SwiGLU product make such outlier channels). Smoothing (as in
SmoothQuant, Xiao et al. 2023) divides each input channel j by s_j and multiplies weight
column j by s_j, which leaves x W^T unchanged but moves range from the activation into the
weight, whose int8 rows quantise it well: s_j = sqrt(max|x_j| / max|W[:, j]|), with max|x_j|
measured by running a fixed calibration text through the float model once at load.

On SmolLM2-135M (1,024 tokens of unseen English prose) perplexity goes from 19.28 in float32
to 20.25 with plain int8 and 19.50 with smoothing; weight-only int8 alone gives 19.34.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .layers import Linear

# A channel that stayed near zero during calibration gets this multiple of the median channel's
# range, so an unseen spike in it is not magnified by a tiny smoothing factor.
_QUIET_CHANNEL_FLOOR = 1.0


def measure_input_absmax(
    model: nn.Module, run_model: Callable[[], None]
) -> dict[str, torch.Tensor]:
    """max |input| per input channel of every Linear, over one call of `run_model`."""
    absmax: dict[str, torch.Tensor] = {}

    def record(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).abs().amax(dim=0).float()
            seen = absmax.get(name)
            absmax[name] = x if seen is None else torch.maximum(seen, x)

        return hook

    handles = [
        module.register_forward_pre_hook(record(name))
        for name, module in model.named_modules()
        if isinstance(module, Linear)
    ]
    try:
        run_model()
    finally:
        for handle in handles:
            handle.remove()
    return absmax


def smoothing_factors(input_absmax: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """s [in_features] with x/s and W*s balanced (migration strength 0.5)."""
    floor = _QUIET_CHANNEL_FLOOR * input_absmax.median()
    x_range = torch.maximum(input_absmax, floor).clamp(min=1e-5)
    w_range = weight.detach().float().abs().amax(dim=0).clamp(min=1e-5)
    return (x_range / w_range).sqrt()


def quantize_linears_int8(model: nn.Module, input_absmax: dict[str, torch.Tensor] | None) -> int:
    """Pack every Linear of `model` as int8; smoothed where its input range was measured.
    Returns how many were packed."""
    packed = 0
    for name, module in model.named_modules():
        if not isinstance(module, Linear) or module.weight is None:
            continue
        absmax = None if input_absmax is None else input_absmax.get(name)
        smoothing = None if absmax is None else smoothing_factors(absmax, module.weight)
        module.pack("int8", smoothing)
        packed += 1
    return packed
