"""CUDA defaults as arithmetic: the block size xformers' paged kernels need, and the batch
sizes decode steps are captured and padded at for CUDA graphs."""

from __future__ import annotations

import pytest
from ziggurat_core.engine.attention.selector import default_block_size
from ziggurat_core.engine.cuda_graph_sizes import (
    context_width_buckets,
    graph_capture_sizes,
    padded_batch_size,
    padded_width,
)


def test_xformers_gets_blocks_its_paged_kernels_read_directly() -> None:
    assert default_block_size("xformers") == 256
    assert default_block_size("torch") == 16


def test_capture_sizes_for_the_default_64_seats() -> None:
    assert graph_capture_sizes(64) == [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64]


def test_capture_sizes_always_include_the_largest_batch() -> None:
    assert graph_capture_sizes(3) == [1, 2, 3]
    assert graph_capture_sizes(1) == [1]
    assert graph_capture_sizes(20) == [1, 2, 4, 8, 16, 20]
    assert graph_capture_sizes(20, step=16) == [1, 2, 4, 16, 20]


@pytest.mark.parametrize(("num_seqs", "padded"), [(1, 1), (3, 4), (5, 8), (8, 8), (9, 16), (57, 64), (64, 64)])
def test_a_step_runs_at_the_smallest_captured_size_that_holds_it(num_seqs: int, padded: int) -> None:
    assert padded_batch_size(num_seqs, graph_capture_sizes(64)) == padded


def test_a_step_larger_than_every_graph_runs_eagerly() -> None:
    assert padded_batch_size(65, graph_capture_sizes(64)) is None
    assert padded_batch_size(1, []) is None


def test_every_batch_pads_by_less_than_a_step() -> None:
    sizes = graph_capture_sizes(256)
    for num_seqs in range(1, 257):
        padded = padded_batch_size(num_seqs, sizes)
        assert padded is not None and num_seqs <= padded < num_seqs + 8


@pytest.mark.parametrize("bad", [0, -3])
def test_bad_sizes_are_refused(bad: int) -> None:
    with pytest.raises(ValueError, match="max_num_seqs"):
        graph_capture_sizes(bad)
    with pytest.raises(ValueError, match="num_seqs"):
        padded_batch_size(bad, [1, 2])


def test_context_widths_double_from_the_smallest_up_to_the_buffers_width() -> None:
    assert context_width_buckets(512, 16) == [16, 32, 64, 128, 256, 512]
    assert context_width_buckets(500, 16) == [16, 32, 64, 128, 256, 500]
    assert context_width_buckets(32, 1) == [1, 2, 4, 8, 16, 32]
    assert context_width_buckets(8, 16) == [8]  # contexts never reach the smallest bucket
    assert context_width_buckets(1) == [1]
    for bad in ((0, 1), (4, 0)):
        with pytest.raises(ValueError):
            context_width_buckets(*bad)


def test_a_step_takes_the_smallest_width_that_holds_its_longest_context() -> None:
    widths = context_width_buckets(500, 16)
    assert [padded_width(b, widths) for b in (1, 16, 17, 100, 256, 257, 500)] == [
        16, 16, 32, 128, 256, 500, 500,
    ]
    for bad in (0, 501):
        with pytest.raises(ValueError):
            padded_width(bad, widths)
