"""The torch.distributed process group of a tensor-parallel engine: gloo on CPU, NCCL on CUDA,
rendezvous on a TCP store that rank 0 opens on a free local port."""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist

# How long a collective waits for the other ranks before it raises (a rank that hangs or died
# without closing its sockets); the first one also covers the workers' start and model load.
COLLECTIVE_TIMEOUT_S = 120.0
_HOST = "127.0.0.1"


class TensorParallelError(RuntimeError):
    """The tensor-parallel group cannot run (set up twice in one process, a rank failed)."""


def open_store(rank: int, size: int, port: int, timeout_s: float) -> dist.TCPStore:
    """Rank 0 opens the store (port 0: the OS picks a free one, read back as `.port`)."""
    return dist.TCPStore(
        _HOST, port, size, is_master=rank == 0, timeout=timedelta(seconds=timeout_s),
        wait_for_workers=False,
    )


def init_group(
    store: dist.Store, rank: int, size: int, device: torch.device, timeout_s: float
) -> None:
    if dist.is_initialized():
        raise TensorParallelError(
            "this process already runs a torch.distributed group (one tensor-parallel engine "
            "per process)"
        )
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend, store=store, rank=rank, world_size=size, timeout=timedelta(seconds=timeout_s)
    )
