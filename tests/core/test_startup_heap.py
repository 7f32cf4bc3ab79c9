"""freeze_startup_heap: start-up garbage is collected, and what lives on leaves the collector's
generations, so its full passes no longer walk it."""

from __future__ import annotations

import gc
import weakref

from ziggurat_core.engine.startup_heap import freeze_startup_heap


class Node:
    def __init__(self) -> None:
        self.itself = self  # a reference cycle: only the collector frees it


def test_garbage_is_collected_and_the_rest_frozen() -> None:
    garbage = Node()
    gone = weakref.ref(garbage)
    del garbage
    live = Node()
    gc.unfreeze()
    try:
        frozen = freeze_startup_heap()
        assert gone() is None
        assert frozen > 0
        # Threads left running by earlier tests may free a few frozen objects meanwhile.
        assert 0 < gc.get_freeze_count() <= frozen
        assert not any(obj is live for obj in gc.get_objects())
    finally:
        gc.unfreeze()
    assert any(obj is live for obj in gc.get_objects())
