"""Which batch sizes and context widths get a captured CUDA graph for decode steps, and which
one a step uses.

A CUDA graph replays fixed shapes, so decode steps are captured at start-up for a set of batch
sizes and a step of `n` sequences runs the smallest captured size >= n, its extra rows padding
(their outputs are never read). Small sizes are captured one by one where padding would double
the work; above them every multiple of `step`, so padding wastes less than `step` rows. A step
larger than every captured size runs eagerly.

The width is the number of block-table columns the step attends over. A fixed-shape decode
attends over every column it is given, so a graph captured at the longest context would make
every step pay for `max_model_len` (on the first GPU, a 256-sequence step gathered ~48 GB for
contexts of ~200 tokens). Widths are therefore bucketed by doubling from `min_width`, and a
step runs at the smallest bucket that holds its longest context.

No torch: this is the arithmetic only; the capture itself needs a GPU.
"""

from __future__ import annotations

import bisect

_SMALL_SIZES = (1, 2, 4)
# The narrowest width bucket, in tokens: below it a narrower gather saves little next to the
# step's matrix products, and every bucket is one more graph per batch size.
MIN_GRAPH_CONTEXT_TOKENS = 256


def graph_capture_sizes(max_num_seqs: int, step: int = 8) -> list[int]:
    """Ascending batch sizes to capture: 1, 2, 4, then every multiple of `step` up to
    `max_num_seqs`, and `max_num_seqs` itself, so every decode batch the scheduler can form has
    a graph."""
    if max_num_seqs < 1:
        raise ValueError(f"max_num_seqs must be >= 1, got {max_num_seqs}")
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    sizes = {size for size in _SMALL_SIZES if size <= max_num_seqs}
    sizes.update(range(step, max_num_seqs + 1, step))
    sizes.add(max_num_seqs)
    return sorted(sizes)


def padded_batch_size(num_seqs: int, capture_sizes: list[int]) -> int | None:
    """The captured size a decode step of `num_seqs` sequences runs at (the smallest one that
    holds it); None where none does and the step runs eagerly. `capture_sizes` is ascending."""
    if num_seqs < 1:
        raise ValueError(f"num_seqs must be >= 1, got {num_seqs}")
    index = bisect.bisect_left(capture_sizes, num_seqs)
    return capture_sizes[index] if index < len(capture_sizes) else None


def context_width_buckets(max_blocks: int, min_width: int = 1) -> list[int]:
    """Ascending block-table widths: `min_width` doubling while below `max_blocks`, then
    `max_blocks` itself (the only width where `min_width` >= `max_blocks`)."""
    if max_blocks < 1:
        raise ValueError(f"max_blocks must be >= 1, got {max_blocks}")
    if min_width < 1:
        raise ValueError(f"min_width must be >= 1, got {min_width}")
    widths = []
    width = min_width
    while width < max_blocks:
        widths.append(width)
        width *= 2
    widths.append(max_blocks)
    return widths


def padded_width(blocks: int, widths: list[int]) -> int:
    """The bucket a step whose longest context needs `blocks` blocks runs at (`widths`
    ascending, its last the buffers' width, which holds every context the buffers accept)."""
    if not 1 <= blocks <= widths[-1]:
        raise ValueError(f"blocks must be in [1, {widths[-1]}], got {blocks}")
    return widths[bisect.bisect_left(widths, blocks)]
