"""Device and dtype resolution, and what the engine reports about the hardware."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from typing import Any

import torch

from .reports import AcceleratorInfo, CpuInfo, DeviceInfo

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def host_to_device(data: Sequence[Any], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """torch.tensor(data) on `device`. On CUDA it is built in pinned host memory and copied with
    non_blocking=True: a copy from pageable memory makes the host wait for the device. (The
    caching host allocator keeps the pinned buffer alive until the copy has run.) Elsewhere
    pinning buys nothing and is not done."""
    if device.type != "cuda":
        return torch.tensor(data, dtype=dtype, device=device)
    return torch.tensor(data, dtype=dtype, pin_memory=True).to(device, non_blocking=True)


def move_to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device`, through pinned memory and without waiting on CUDA (as
    `host_to_device`)."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but CUDA is not available on this host")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {name!r}: use auto, cpu or cuda[:N]")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto' is float32 on CPU (several times faster than bf16 matmul there), bf16 on CUDA."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return _DTYPES[name.lower()]
    except KeyError:
        raise ValueError(f"unsupported dtype {name!r}: use auto, float32, float16 or bfloat16") from None


def total_host_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def available_host_memory() -> int:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return total_host_memory() // 2


def device_memory(device: torch.device) -> tuple[int, int]:
    """(free, total) bytes of the device the KV cache lives on."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return int(free), int(total)
    return available_host_memory(), total_host_memory()


def device_info(engine_devices: Sequence[torch.device]) -> DeviceInfo:
    """The accelerators among `engine_devices` (the devices the engine runs on; an empty list
    for a CPU engine) and the host's CPU.

    Only the engine's own GPUs are read: `mem_get_info` creates a CUDA context (hundreds of MB
    of device memory) on every device it touches, which on a shared host belongs to others."""
    devices: list[AcceleratorInfo] = []
    indices = sorted({cuda_index(device) for device in engine_devices if device.type == "cuda"})
    if indices:
        for index in indices:
            props = torch.cuda.get_device_properties(index)
            free, total = torch.cuda.mem_get_info(index)
            devices.append(AcceleratorInfo(
                id=index,
                name=props.name,
                total_memory=int(total),
                free_memory=int(free),
                compute_capability=f"{props.major}.{props.minor}",
                driver_version=_nvidia_driver_version(),
                cuda_version=torch.version.cuda,
            ))
    cpu = CpuInfo(
        name=platform.processor() or platform.machine(),
        architecture=platform.machine(),
        cores=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        total_memory=total_host_memory(),
        available_memory=available_host_memory(),
    )
    return DeviceInfo(devices=devices, cpu=cpu)


def cuda_index(device: torch.device) -> int:
    """The ordinal of a CUDA device; a bare "cuda" means the current device."""
    return device.index if device.index is not None else torch.cuda.current_device()


def dtype_name(dtype: torch.dtype) -> str:
    """"float32" for torch.float32: the name users write in the settings."""
    return str(dtype).removeprefix("torch.")


def _nvidia_driver_version() -> str | None:
    try:
        with open("/proc/driver/nvidia/version") as handle:
            first = handle.readline()
    except OSError:
        return None
    parts = first.split("Kernel Module")
    return parts[1].split()[0] if len(parts) > 1 and parts[1].split() else None
