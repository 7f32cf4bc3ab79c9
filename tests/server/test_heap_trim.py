"""The periodic heap trim (server/heap_trim.py): it trims, it stops, a failure ends it quietly,
and the server runs it from start-up to shutdown."""

from __future__ import annotations

import asyncio
import platform
import threading
from pathlib import Path

import pytest
from ziggurat_core.engine.errors import EngineError
from ziggurat_server.app import create_app
from ziggurat_server.heap_trim import PeriodicHeapTrim, glibc_malloc_trim, start_heap_trim
from ziggurat_server.serving_engine import ServingEngine
from ziggurat_server.settings import ServerSettings


def test_trims_repeatedly_until_stopped() -> None:
    calls = 0
    third_call = threading.Event()

    def trim() -> int:
        nonlocal calls
        calls += 1
        if calls == 3:
            third_call.set()
        return 1

    trimmer = PeriodicHeapTrim(trim, interval_s=0.001)
    trimmer.start()
    assert third_call.wait(60)
    trimmer.stop()
    after_stop = calls
    trimmer.stop()  # a second stop changes nothing
    assert calls == after_stop
    assert not trimmer._thread.is_alive()


def test_a_failing_trim_ends_the_thread_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    def trim() -> int:
        raise OSError("no trim here")

    trimmer = PeriodicHeapTrim(trim, interval_s=0.001)
    trimmer.start()
    trimmer._thread.join(60)
    assert not trimmer._thread.is_alive()
    assert "malloc_trim failed" in caplog.text
    trimmer.stop()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_glibc_trim_is_found_and_runs() -> None:
    trim = glibc_malloc_trim()
    assert trim is not None
    assert trim() in (0, 1)  # 1: memory was released, 0: there was none to release
    trimmer = start_heap_trim(interval_s=3600)
    assert trimmer is not None
    trimmer.stop()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_the_app_trims_from_start_up_to_shutdown(tmp_path: Path) -> None:
    def no_engine() -> ServingEngine:
        raise EngineError("not needed here")

    app = create_app(ServerSettings(model=str(tmp_path / "unused.gguf")), engine_factory=no_engine)

    def trim_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "ziggurat-heap-trim"]

    async def main() -> None:
        async with app.router.lifespan_context(app):
            assert [t.is_alive() for t in trim_threads()] == [True]

    asyncio.run(main())
    assert trim_threads() == []
