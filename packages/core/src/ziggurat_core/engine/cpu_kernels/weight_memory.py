"""Memory for the packed int8 weights on CPU: 2 MiB pages where Linux has transparent huge pages.

A decode step reads every weight of the model once, and the GEMM reads a weight's tiles far
apart (a chunk of inputs of one tile, then of the next, csrc/int8_gemm_avx2.c): with 4 KiB pages
nearly every read starts on a page the TLB does not hold, and the page walks hold the loads and
the prefetches back, most where a step has few rows to spread them over. Most weights are far
smaller than 2 MiB, so they are placed one after another in mappings of ARENA_BYTES that many
weights share, each advised to huge pages (madvise(MADV_HUGEPAGE) is only advice, as for the KV
cache in cache_memory.py: where the kernel has no transparent huge pages nothing else changes).

A mapping lives as long as any weight placed in it: the tensors hold it, and this module only
keeps a weak reference to the one it is filling.
"""

from __future__ import annotations

import mmap
import threading
import weakref

import torch

# Bytes per mapping that weights share (a multiple of the 2 MiB huge page); a larger weight gets
# its own.
ARENA_BYTES = 32 * 2**20
_HUGE_PAGE = 2 * 2**20
# Each weight starts on a cache line.
_ALIGN = 64

_lock = threading.Lock()
# The mapping being filled (weakly: the weights placed in it hold it) and the offsets, within
# it, of its next free byte and of its end.
_arena: weakref.ReferenceType[mmap.mmap] | None = None
_next = _end = 0


def _huge_page_mapping(nbytes: int) -> tuple[mmap.mmap, int]:
    """An anonymous mapping (zero-filled, resident once touched) advised to huge pages, with the
    offset in it of a 2 MiB boundary followed by at least `nbytes` bytes."""
    mapping = mmap.mmap(-1, nbytes + _HUGE_PAGE, flags=mmap.MAP_PRIVATE)
    if hasattr(mmap, "MADV_HUGEPAGE"):  # Linux
        mapping.madvise(mmap.MADV_HUGEPAGE)
    address = torch.frombuffer(mapping, dtype=torch.int8, count=1).data_ptr()
    return mapping, -address % _HUGE_PAGE


def huge_page_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of `tensor` (same shape and dtype) in huge-page-advised memory: in the
    mapping being filled, or in a new one."""
    global _arena, _next, _end
    nbytes = tensor.numel() * tensor.element_size()
    if nbytes == 0:
        return tensor.contiguous()
    with _lock:
        mapping = None if _arena is None else _arena()
        if nbytes > ARENA_BYTES:
            mapping, offset = _huge_page_mapping(nbytes)
        else:
            if mapping is None or _next + nbytes > _end:
                mapping, _next = _huge_page_mapping(ARENA_BYTES)
                _arena, _end = weakref.ref(mapping), _next + ARENA_BYTES
            offset = _next
            _next += -(-nbytes // _ALIGN) * _ALIGN
        # torch.frombuffer holds a reference to the mapping: the weight keeps it alive.
        place = torch.frombuffer(mapping, dtype=torch.int8, count=nbytes, offset=offset)
    copy = place.view(tensor.dtype).view(tensor.shape)
    copy.copy_(tensor)
    return copy
