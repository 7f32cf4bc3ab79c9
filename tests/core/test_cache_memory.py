"""The CPU KV cache's memory (cpu_kernels/cache_memory.py): zeros that cost nothing until
touched, kept alive by the tensor, and advised to transparent huge pages on Linux, which the
decode attention's scattered block reads depend on."""

from __future__ import annotations

import gc
import sys

import pytest
import torch
from proc_mappings import THP, mapping_of
from ziggurat_core.engine.cpu_kernels.cache_memory import zeroed_cache_tensor


def test_zero_filled_writable_and_kept_alive_by_the_tensor() -> None:
    cache = zeroed_cache_tensor((2, 300, 16, 3, 64), torch.float16)
    assert cache.shape == (2, 300, 16, 3, 64) and cache.dtype == torch.float16
    assert cache.is_contiguous()
    assert not cache.any()
    cache[1, 299, 15] = 2.5
    gc.collect()  # nothing but the tensor holds the mapping now
    assert float(cache.float().sum()) == 2.5 * 3 * 64


def test_empty_shape() -> None:
    assert zeroed_cache_tensor((2, 0, 16, 3, 64), torch.float32).numel() == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps (Linux)")
def test_untouched_pages_cost_no_memory() -> None:
    cache = zeroed_cache_tensor((64 * 2**20,), torch.uint8)
    assert int(mapping_of(cache.data_ptr())["Rss"].split()[0]) == 0
    cache[: 2**20] = 1
    assert int(mapping_of(cache.data_ptr())["Rss"].split()[0]) >= 1024


@pytest.mark.skipif(not THP.exists(), reason="this kernel has no transparent huge pages")
def test_advised_to_huge_pages() -> None:
    cache = zeroed_cache_tensor((16 * 2**20,), torch.uint8)
    assert "hg" in mapping_of(cache.data_ptr())["VmFlags"].split()
