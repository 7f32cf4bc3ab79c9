"""The C kernels a layer uses, loaded on the layer's first CPU call and kept by that layer.

Kept per layer, not per process: a model's layers run the variant ZIGGURAT_CPU_ISA selected when
the model first ran (the engine's calibration pass or first step), whatever another engine in the
same process selected before or after it. One memo for the whole process made the first engine's
variant every later engine's, so an engine could run the norms of one variant beside the int8
layers and attention of another, and its layer-by-layer path no longer matched its one-call path
(`cpu_kernels/decoder_layers.py`) bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

_Kernels = TypeVar("_Kernels")


class KernelsOnFirstUse(Generic[_Kernels]):
    """`load()` called once, on the first call (None where the CPU kernels are unavailable).

    Loading waits for the first call so that a layer that never sees a CPU tensor (a CUDA run)
    never builds the CPU kernels."""

    def __init__(self, load: Callable[[], _Kernels | None]) -> None:
        self._load = load
        self._loaded = False
        self._kernels: _Kernels | None = None

    def __call__(self) -> _Kernels | None:
        if not self._loaded:
            self._kernels = self._load()
            self._loaded = True
        return self._kernels
