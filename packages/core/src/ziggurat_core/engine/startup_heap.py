"""Freeze the heap a serving process built at start-up, so the garbage collector's full passes
stay short.

A loaded engine leaves a few hundred thousand long-lived Python objects behind (torch, the
model's modules, the tokenizer, the web framework's routes). CPython's full collection walks
every one of them, holding the GIL, in whichever thread's allocation triggered it: over the
default model's server heap one pass takes 0.15-0.2 s of CPU (docs/reliability.md, session 9),
and while serving, the objects that outlive their requests trigger one every so often, each
stopping the engine's stepping thread, and so every stream, for as long. `gc.freeze()` moves
those objects where the collector never looks; everything created afterwards is collected as
before.
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
