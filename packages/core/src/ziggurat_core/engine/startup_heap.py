"""Freeze the heap a serving process built at start-up, so the garbage collector's full passes
stay short.

A loaded engine leaves a few hundred thousand long-lived Python objects behind (torch, the
model's modules, the tokenizer, the web framework's routes). CPython's full collection walks
every one of them, holding the GIL, in whichever thread's allocation triggered it; in a server
under load such a pass stopped the engine's stepping thread for up to a fifth of a second
(docs/reliability.md, session 9). `gc.freeze()` moves those objects where the collector never
looks; everything requests create afterwards is collected as before.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> int:
    """Collect what start-up left as garbage, then freeze the rest; returns the objects frozen.

    For the code that owns the process (the server, a replica's actor) once its engine is
    loaded; a library embedding the engine leaves its host's collector alone."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
