"""The frontend's worker pool: its threads run at the configured nice value, nothing else does,
it stays within its size, and closing it ends its threads."""

from __future__ import annotations

import asyncio
import logging
import os
import threading

import anyio
import pytest
from ziggurat_server.frontend_pool import THREAD_NAME_PREFIX, FrontendPool
from ziggurat_server.shutdown import ServerShuttingDown
from ziggurat_server.thread_priority import NICEST, thread_nice, thread_nice_supported

pytestmark = pytest.mark.skipif(not thread_nice_supported(),
                                reason="per-thread nice values exist on Linux only")


def nice_in_proc(native_id: int) -> int:
    """A thread's nice value as the kernel reports it (field 19 of /proc/<pid>/task/<tid>/stat),
    read from outside the thread."""
    with open(f"/proc/self/task/{native_id}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[16])  # fields after the name start at field 3


def whoami() -> tuple[int, str, int]:
    return threading.get_native_id(), threading.current_thread().name, thread_nice()


def test_the_pool_threads_run_at_the_configured_nice_and_nothing_else_does() -> None:
    base = thread_nice()
    pool = FrontendPool(threads=2, nice=7)

    async def scenario() -> None:
        native_id, name, nice = await pool.run(whoami)
        assert name.startswith(THREAD_NAME_PREFIX)
        assert nice == min(NICEST, base + 7)
        assert nice_in_proc(native_id) == min(NICEST, base + 7)
        # The event loop and anyio's shared worker threads keep the server's priority.
        assert thread_nice() == base
        assert (await anyio.to_thread.run_sync(whoami))[2] == base
        assert (await asyncio.to_thread(whoami))[2] == base

    try:
        asyncio.run(scenario())
    finally:
        pool.close()
    assert thread_nice() == base


def test_nice_zero_leaves_the_threads_at_the_servers_priority() -> None:
    base = thread_nice()
    pool = FrontendPool(threads=1, nice=0)
    try:
        native_id, _, nice = asyncio.run(pool.run(whoami))
        assert nice == base and nice_in_proc(native_id) == base
    finally:
        pool.close()


def test_the_nice_value_stops_at_the_lowest_priority() -> None:
    pool = FrontendPool(threads=1, nice=NICEST)

    async def twice() -> list[int]:
        return [(await pool.run(whoami))[2] for _ in range(2)]

    try:
        assert asyncio.run(twice()) == [NICEST, NICEST]  # set once per thread, never below 19
    finally:
        pool.close()


def test_the_pool_never_uses_more_threads_than_its_size() -> None:
    pool = FrontendPool(threads=2, nice=1)
    inside = threading.Semaphore(0)
    release = threading.Event()

    def held() -> int:
        inside.release()
        assert release.wait(60)
        return threading.get_native_id()

    async def scenario() -> set[int]:
        tasks = [asyncio.ensure_future(pool.run(held)) for _ in range(6)]
        for _ in range(2):
            assert await asyncio.to_thread(inside.acquire, True, 60)
        release.set()
        return set(await asyncio.gather(*tasks))

    try:
        assert len(asyncio.run(scenario())) <= 2
    finally:
        release.set()
        pool.close()


def test_close_drops_queued_work_waits_for_running_work_and_refuses_more() -> None:
    pool = FrontendPool(threads=1, nice=1)
    inside = threading.Event()
    release = threading.Event()
    finished = []

    def held() -> None:
        inside.set()
        assert release.wait(60)
        finished.append(True)

    async def scenario() -> None:
        running = asyncio.ensure_future(pool.run(held))
        assert await asyncio.to_thread(inside.wait, 60)
        queued = asyncio.ensure_future(pool.run(whoami))  # the one thread is busy
        closing = asyncio.ensure_future(asyncio.to_thread(pool.close))
        await asyncio.wait([queued])  # close cancelled it while the running work still runs
        assert queued.cancelled() and not finished
        release.set()
        await closing
        assert finished == [True]
        await running
        with pytest.raises(ServerShuttingDown):
            await pool.run(whoami)

    try:
        asyncio.run(scenario())
    finally:
        release.set()
        pool.close()
    assert not [t for t in threading.enumerate() if t.name.startswith(THREAD_NAME_PREFIX)]


def test_work_errors_reach_the_caller() -> None:
    pool = FrontendPool(threads=1, nice=1)

    def broken() -> None:
        raise ValueError("template says no")

    try:
        with pytest.raises(ValueError, match="template says no"):
            asyncio.run(pool.run(broken))
        assert asyncio.run(pool.run(lambda: 42)) == 42  # the thread survived
    finally:
        pool.close()


def test_a_refused_nice_value_is_logged_once_and_the_work_still_runs(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def refuse(*args: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "setpriority", refuse)
    base = thread_nice()
    pool = FrontendPool(threads=3, nice=5)
    release = threading.Barrier(3, timeout=60)

    def on_three_threads() -> int:
        release.wait()  # every thread of the pool has started
        return thread_nice()

    async def scenario() -> list[int]:
        return list(await asyncio.gather(*(pool.run(on_three_threads) for _ in range(3))))

    try:
        with caplog.at_level(logging.WARNING, logger="ziggurat_server"):
            assert asyncio.run(scenario()) == [base] * 3
    finally:
        pool.close()
    refusals = [r for r in caplog.records if "setting their nice value failed" in r.getMessage()]
    assert len(refusals) == 1


def test_where_threads_have_no_nice_value_one_line_says_so(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr("ziggurat_server.frontend_pool.thread_nice_supported", lambda: False)
    base = thread_nice()
    with caplog.at_level(logging.INFO, logger="ziggurat_server"):
        pool = FrontendPool(threads=1, nice=5)
    try:
        assert pool.nice == 0
        assert asyncio.run(pool.run(whoami))[2] == base
    finally:
        pool.close()
    lines = [r.getMessage() for r in caplog.records if "--frontend-nice 5" in r.getMessage()]
    assert len(lines) == 1 and "need Linux" in lines[0]


def test_a_pool_refuses_nonsense_sizes_and_priorities() -> None:
    with pytest.raises(ValueError, match="at least one thread"):
        FrontendPool(threads=0, nice=1)
    with pytest.raises(ValueError, match="only be made nicer"):
        FrontendPool(threads=1, nice=-1)
