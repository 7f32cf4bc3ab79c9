"""Memory for the paged KV cache on CPU: zero pages on first touch, 2 MiB pages where Linux has
transparent huge pages.

A decode step reads every sequence's cached keys and values block by block, and a sequence's
blocks are scattered over the cache. With 4 KiB pages nearly every block starts on a page the
TLB does not hold, and the attention kernel's prefetches into such pages do little; with 2 MiB
pages the TLB covers the cache. The price: a first write anywhere in a 2 MiB stretch makes all of
it resident, so each cache tensor holds up to 2 MiB more than the blocks in use.
madvise(MADV_HUGEPAGE) is only advice: where the kernel has no transparent huge pages, or they
are off, nothing else changes.
"""

from __future__ import annotations

import math
import mmap

import torch


def zeroed_cache_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A zero-filled CPU tensor from an anonymous mapping (the OS zeroes each page when it is
    first touched, so a large cache costs nothing up front), advised to huge pages."""
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if nbytes == 0:
        return torch.zeros(shape, dtype=dtype)
    buffer = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE)  # anonymous, not shared memory
    if hasattr(mmap, "MADV_HUGEPAGE"):  # Linux
        buffer.madvise(mmap.MADV_HUGEPAGE)
    # The tensor keeps the mapping alive (torch.frombuffer holds a reference to it).
    return torch.frombuffer(buffer, dtype=torch.uint8).view(dtype).view(shape)
