"""Give a module built on the `meta` device real, uninitialised storage in the run dtype.

A model built on `meta` holds shapes only; `materialize_parameters` then allocates each
parameter once, directly on the target device and in the run dtype, so loading never holds a
float32 copy of the model next to the run-dtype one (peak memory: the model plus the one
checkpoint tensor being copied in).
"""

from __future__ import annotations

import torch
from torch import nn


def materialize_parameters(module: nn.Module, device: torch.device | str, dtype: torch.dtype) -> int:
    """Replace every meta parameter of `module` with `torch.empty` storage on `device`
    (floating-point ones in `dtype`); returns the bytes allocated.

    Tied parameters (one Parameter in two modules, e.g. embedding and LM head) stay tied:
    `nn.Module.to_empty` would give each module its own copy.
    """
    replaced: dict[int, nn.Parameter] = {}
    allocated = 0
    for submodule in module.modules():
        for name, param in list(submodule._parameters.items()):
            if param is None:
                continue
            if id(param) not in replaced:
                if not param.is_meta:
                    raise ValueError(f"parameter {name!r} already has storage on {param.device}")
                param_dtype = dtype if param.is_floating_point() else param.dtype
                storage = torch.empty(param.shape, dtype=param_dtype, device=device)
                replaced[id(param)] = nn.Parameter(storage, requires_grad=False)
                allocated += storage.numel() * storage.element_size()
            submodule._parameters[name] = replaced[id(param)]
    return allocated
