"""Which batch sizes get a captured CUDA graph for decode steps, and which one a step uses.

A CUDA graph replays fixed shapes, so decode steps are captured at start-up for a set of batch
sizes and a step of `n` sequences runs the smallest captured size >= n, its extra rows padding
(their outputs are never read). Small sizes are captured one by one where padding would double
the work; above them every multiple of `step`, so padding wastes less than `step` rows. A step
larger than every captured size runs eagerly. No torch: this is the arithmetic only; the
capture itself needs a GPU.
"""

from __future__ import annotations

import bisect

_SMALL_SIZES = (1, 2, 4)


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
