"""The frontend's worker pool: the threads that render chat templates, tokenise prompts and
detokenise token ids, at a lower CPU priority than the rest of the server.

Why a pool of its own rather than anyio's shared worker threads: the pool's threads change
their nice value, and a nice value stays with a thread for its life (an unprivileged thread can
never raise its priority back), so the threads that do it must be ones no other code borrows.
Its size is bounded: tokenising is CPU work, and more threads than cores only queue it in the
kernel instead of here.

Why a lower priority: on a host with few cores the engine's OpenMP team uses every core, and
each of its parallel regions waits for its slowest thread. A frontend thread tokenising at the
same priority takes a core from one of them for a whole time slice, and every running stream's
next token waits for it. At a higher nice value the kernel runs the frontend when the engine's
threads leave a core idle (between steps, while they sleep) and preempts it when they wake, so
a burst of long prompts is tokenised a little later instead of slowing every stream down.
The event loop stays at the server's priority: /health and the streams' writes go through it.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from .shutdown import ServerShuttingDown
from .thread_priority import lower_this_thread, thread_nice_supported

logger = logging.getLogger("ziggurat_server")

T = TypeVar("T")

THREAD_NAME_PREFIX = "ziggurat-frontend"
# With fewer threads, one or two huge prompts would hold every short one back while they are
# tokenised; the kernel time-slices a few threads fairly.
MIN_DEFAULT_THREADS = 4


def default_frontend_threads() -> int:
    """The CPUs this process may run on, at least MIN_DEFAULT_THREADS."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    return max(MIN_DEFAULT_THREADS, usable)


class FrontendPool:
    """A bounded pool of worker threads, each `nice` nicer than the thread that starts it.

    Threads start when work first needs them. `close` waits for the work already running and
    drops what is still queued; `run` after `close` is the 503 of a server shutting down."""

    def __init__(self, threads: int, nice: int) -> None:
        if threads < 1:
            raise ValueError(f"a frontend pool needs at least one thread, got {threads}")
        if nice < 0:
            raise ValueError(f"a thread can only be made nicer, got nice {nice}")
        if nice and not thread_nice_supported():
            logger.info("frontend threads run at the server's priority: per-thread nice values "
                        "(--frontend-nice %d) need Linux", nice)
            nice = 0
        self.threads = threads
        self.nice = nice
        self._refused = False  # the platform refused a nice value once: said so, not again
        self._executor = ThreadPoolExecutor(max_workers=threads,
                                            thread_name_prefix=THREAD_NAME_PREFIX,
                                            initializer=self._lower_priority)

    def _lower_priority(self) -> None:
        if not self.nice:
            return
        try:
            lower_this_thread(self.nice)
        except OSError as exc:  # a sandbox may forbid it; the thread still works at nice 0
            if not self._refused:
                self._refused = True
                logger.warning("frontend threads run at the server's priority: setting their "
                               "nice value failed (%s)", exc)

    async def run(self, work: Callable[[], T]) -> T:
        """`work()` in one of the pool's threads. Cancelling the caller drops work not yet
        started; work already running finishes and its result is discarded."""
        try:
            future = self._executor.submit(contextvars.copy_context().run, work)
        except RuntimeError:  # the pool is closed: the server is shutting down
            raise ServerShuttingDown() from None
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        """Wait for the running work to finish (blocking: call it off the event loop) and end
        the threads; queued work is cancelled."""
        self._executor.shutdown(wait=True, cancel_futures=True)
