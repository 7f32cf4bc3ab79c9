"""Give the C heap's free memory back to the system now and then (glibc's `malloc_trim`).

A serving process frees as much as it allocates, but glibc returns freed heap memory to the
system only from the top of each arena, so memory freed in the middle of an arena stays in the
process's RSS. The server allocates from many threads (the event loop, the tokenising pool, the
engine's stepping thread and torch's workers), each arena fragmenting on its own, so RSS creeps
up under steady traffic although nothing leaks (docs/reliability.md has the soak figures and
the diagnosis). `malloc_trim(0)` hands every arena's free pages back. It holds each arena's
lock while it walks it, so it runs in its own low-priority thread and only every
TRIM_INTERVAL_S seconds: rare enough to cost nothing measurable, often enough that the freed
memory of a burst does not stay. Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import platform
import threading
from collections.abc import Callable

from .thread_priority import NICEST, lower_this_thread

logger = logging.getLogger("ziggurat_server")

TRIM_INTERVAL_S = 30.0


def glibc_malloc_trim() -> Callable[[], object] | None:
    """`malloc_trim(0)` of the C library in this process, or None when it is not glibc's."""
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)  # the C library the process already has loaded
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


class PeriodicHeapTrim:
    """A daemon thread that calls `trim` every `interval_s` seconds until `stop()`."""

    def __init__(self, trim: Callable[[], object], interval_s: float = TRIM_INTERVAL_S) -> None:
        self._trim = trim
        self._interval_s = interval_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ziggurat-heap-trim", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        # The lowest scheduling priority this thread can have: the trim waits for idle cores.
        with contextlib.suppress(NotImplementedError, OSError):
            lower_this_thread(NICEST)
        while not self._stopped.wait(self._interval_s):
            try:
                self._trim()
            except Exception:  # never worth killing the thread (or the server) over
                logger.exception("malloc_trim failed; no longer trimming the heap")
                return


def start_heap_trim(interval_s: float = TRIM_INTERVAL_S) -> PeriodicHeapTrim | None:
    """The running trimmer, or None where the C library is not glibc."""
    trim = glibc_malloc_trim()
    if trim is None:
        return None
    trimmer = PeriodicHeapTrim(trim, interval_s)
    trimmer.start()
    return trimmer
