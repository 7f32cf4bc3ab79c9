"""How many KV-cache blocks an engine gets, and what one block costs, from its settings, the
device's memory and (on CUDA) the profiled step."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import EngineConfig, ModelConfig, parse_memory_size
from .device import device_memory
from .reports import MemoryProfile

# Without a setting, the CPU KV cache takes this much (or a fifth of free memory if less).
_DEFAULT_CPU_KV_BYTES = 2 * 2**30


@dataclass
class KVCacheSpec:
    num_blocks: int
    block_size: int
    bytes_per_block: int

    @property
    def total_bytes(self) -> int:
        return self.num_blocks * self.bytes_per_block

    @property
    def num_slots(self) -> int:
        return self.num_blocks * self.block_size


def kv_bytes_per_block(model: ModelConfig, block_size: int, kv_dtype: torch.dtype) -> int:
    """K and V bytes of one block over all layers, for a cache of element type `kv_dtype`."""
    element = torch.tensor([], dtype=kv_dtype).element_size()
    return 2 * model.num_hidden_layers * block_size * model.num_key_value_heads * model.head_dim * element


def plan_kv_cache(
    config: EngineConfig,
    model: ModelConfig,
    device: torch.device,
    kv_dtype: torch.dtype,
    max_model_len: int,
    profiled: MemoryProfile | None = None,
    reserved_blocks: int = 0,
) -> KVCacheSpec:
    """How many blocks of `kv_dtype` the scheduler may hand out: an explicit count, a byte size,
    a fraction, the profiled share on CUDA (`profiled`, see memory_profile.py), or the CPU
    default (a byte budget holds twice the blocks in a 2-byte dtype as in float32).

    `reserved_blocks`: blocks the cache holds beyond those (static decode's padding block),
    taken out of a byte budget so the whole cache stays within it; an explicit count is the
    count the scheduler gets."""
    block_size = config.resolved_block_size
    per_block = kv_bytes_per_block(model, block_size, kv_dtype)
    if config.num_kv_blocks is not None:
        return KVCacheSpec(config.num_kv_blocks, block_size, per_block)
    free, total = device_memory(device)
    if config.kv_cache_memory is not None:
        size = parse_memory_size(config.kv_cache_memory)
        budget = int(size * (free if device.type == "cuda" else total)) if isinstance(size, float) else size
    elif profiled is not None:
        budget = profiled.kv_cache_bytes
    elif device.type == "cuda":
        raise ValueError("a CUDA KV cache without a size needs the memory profile")
    else:
        budget = min(_DEFAULT_CPU_KV_BYTES, free // 5)
        # No point holding more than every seat filled to the context window.
        useful = config.max_num_seqs * math.ceil(max_model_len / block_size) + 1
        budget = min(budget, useful * per_block)
    num_blocks = budget // per_block - reserved_blocks
    if num_blocks < 1:
        raise ValueError(
            f"KV cache budget of {budget} bytes holds no block of {per_block} bytes; "
            "raise kv_cache_memory"
        )
    return KVCacheSpec(int(num_blocks), block_size, per_block)
