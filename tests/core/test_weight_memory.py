"""The packed int8 weights' memory (cpu_kernels/weight_memory.py): exact copies, small weights
sharing one mapping advised to transparent huge pages (which the GEMM's far-apart tile reads
depend on), a large one in a mapping of its own, each mapping kept alive by its weights only."""

from __future__ import annotations

import gc
import sys

import pytest
import torch
from proc_mappings import THP, mapping_of
from ziggurat_core.engine.cpu_kernels import PackedInt8Weight
from ziggurat_core.engine.cpu_kernels.weight_memory import ARENA_BYTES, huge_page_copy

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc/self/smaps (Linux)"
)


def _weights(count: int, shape: tuple[int, ...]) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(count)
    return [torch.randint(-128, 128, shape, dtype=torch.int8, generator=gen) for _ in range(count)]


def test_copies_are_exact_contiguous_and_independent_of_the_source() -> None:
    sources = [*_weights(3, (37, 5)), torch.randn(7, 3, 2)[:, 1], torch.arange(10, dtype=torch.int32)]
    copies = [huge_page_copy(t) for t in sources]
    for source, copy in zip(sources, copies, strict=True):
        assert copy.shape == source.shape and copy.dtype == source.dtype
        assert copy.is_contiguous() and torch.equal(copy, source)
        assert copy.data_ptr() % 64 == 0  # each starts on a cache line
    sources[0].zero_()
    assert copies[0].any()
    assert huge_page_copy(torch.empty(0, 4, dtype=torch.int8)).shape == (0, 4)


def _fill_the_current_mapping() -> torch.Tensor:
    """A weight of a whole mapping's size: it cannot share one with any weight placed before,
    and the next weight goes to a new mapping."""
    return huge_page_copy(torch.ones(ARENA_BYTES, dtype=torch.int8))


def test_small_weights_are_placed_one_after_another_from_a_huge_page_boundary() -> None:
    full = _fill_the_current_mapping()
    a, b, c = (huge_page_copy(t) for t in _weights(3, (1000, 577)))
    assert a.data_ptr() % (2 * 2**20) == 0
    assert b.data_ptr() == a.data_ptr() + 577_024  # 577,000 bytes rounded up to 64
    assert c.data_ptr() == b.data_ptr() + 577_024
    # A weight larger than a mapping gets one of its own, also from a 2 MiB boundary.
    large = huge_page_copy(torch.ones(ARENA_BYTES + 1, dtype=torch.int8))
    assert large.data_ptr() % (2 * 2**20) == 0 and int(large.sum()) == ARENA_BYTES + 1
    assert huge_page_copy(_weights(1, (10, 10))[0]).data_ptr() == c.data_ptr() + 577_024
    assert int(full.sum()) == ARENA_BYTES


@linux_only
def test_a_mapping_lives_as_long_as_its_weights() -> None:
    full = _fill_the_current_mapping()
    address = full.data_ptr()
    later = huge_page_copy(_weights(1, (100, 100))[0])  # in a new mapping
    gc.collect()
    assert int(full.sum()) == ARENA_BYTES  # nothing but the weight holds its mapping
    assert mapping_of(address)
    del full
    gc.collect()
    assert not mapping_of(address)  # unmapped
    assert later.shape == (100, 100)


@pytest.mark.skipif(not THP.exists(), reason="this kernel has no transparent huge pages")
def test_packed_weights_are_advised_to_huge_pages() -> None:
    weight = PackedInt8Weight(_weights(1, (960, 576))[0])
    assert "hg" in mapping_of(weight.packed.data_ptr())["VmFlags"].split()
