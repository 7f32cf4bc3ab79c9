"""Read a step's results back to the host in one device-to-host copy.

Every `.tolist()` of a device tensor is a copy and a wait for the device. The sampler's results
of a step (the chosen tokens, and for the rows that asked, their logprobs and top logprobs) are
several tensors; read one by one they cost one wait each. Here they are packed into one float64
vector on the device, copied once into pinned host memory without blocking, and split again
after a single wait for the stream. float64 holds every value exactly: float32 logprobs widen
without rounding, and integer ids are exact below 2**53 (vocabularies are far smaller).
"""

from __future__ import annotations

import torch

_EXACT_INT_LIMIT = 2**53


def read_to_host(tensors: list[torch.Tensor], packed: bool | None = None) -> list[torch.Tensor]:
    """`tensors` (all on one device; float32/float64 or integer) as host tensors of the same
    dtypes and shapes. `packed`: through one float64 copy (None: off the CPU, where a copy
    costs a wait; on CPU the tensors already are host memory and come back as they are).
    Integer values must lie within +-2**53."""
    if not tensors:
        return []
    device = tensors[0].device
    if packed is None:
        packed = device.type != "cpu"
    if not packed:
        return [tensor.cpu() for tensor in tensors]
    for tensor in tensors:
        if tensor.device != device:
            raise ValueError(f"read_to_host needs one device, got {device} and {tensor.device}")
        if tensor.dtype not in (torch.float32, torch.float64, torch.int32, torch.int64):
            raise ValueError(f"read_to_host reads float32/64 and int32/64 tensors, got {tensor.dtype}")
    flat = torch.cat([tensor.reshape(-1).to(torch.float64) for tensor in tensors])
    on_cuda = device.type == "cuda"
    host = torch.empty(flat.shape, dtype=torch.float64, pin_memory=on_cuda)
    host.copy_(flat, non_blocking=on_cuda)
    if on_cuda:
        torch.cuda.current_stream(device).synchronize()  # the one wait of the step
    results: list[torch.Tensor] = []
    offset = 0
    for tensor in tensors:
        part = host[offset : offset + tensor.numel()]
        offset += tensor.numel()
        if not tensor.dtype.is_floating_point and part.numel() and bool(part.abs().max() >= _EXACT_INT_LIMIT):
            raise ValueError("read_to_host: an integer value beyond 2**53 would not come back exactly")
        results.append(part.to(tensor.dtype).view(tensor.shape))
    return results
