"""Lowering one thread's CPU priority (its nice value), for the server's background threads.

Linux keeps a nice value per thread and `setpriority(PRIO_PROCESS, tid, ...)` changes the
thread whose kernel id is `tid`. Elsewhere `PRIO_PROCESS` names a whole process, and a thread id
passed there could name some other process, so this only ever acts on Linux.
"""

from __future__ import annotations

import os
import sys
import threading

# The lowest priority a nice value can give (Linux's range is -20..19).
NICEST = 19


def thread_nice_supported() -> bool:
    """Whether a single thread's nice value can be changed on this platform."""
    return sys.platform.startswith("linux") and hasattr(os, "setpriority")


def thread_nice(native_id: int | None = None) -> int:
    """The nice value of the thread with kernel id `native_id` (default: the calling one)."""
    return os.getpriority(os.PRIO_PROCESS, native_id or threading.get_native_id())


def lower_this_thread(increment: int) -> int:
    """Make the calling thread `increment` nicer than it is (at most NICEST) and return its new
    nice value. A thread may always lower its own priority; raising it back needs privileges,
    which is why this only goes one way. Raises OSError where the platform refuses, and
    NotImplementedError where per-thread priorities do not exist."""
    if not thread_nice_supported():
        raise NotImplementedError("per-thread nice values need Linux")
    tid = threading.get_native_id()
    target = min(NICEST, thread_nice(tid) + increment)
    os.setpriority(os.PRIO_PROCESS, tid, target)
    return target
