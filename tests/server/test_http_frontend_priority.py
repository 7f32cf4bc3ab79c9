"""`--frontend-nice` and `--frontend-threads` reach the running server: after prompts were
tokenised, the server process has threads at that nice value, and its main thread (the event
loop) kept the server's own priority."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fixtures_models import TinyModel
from server_helpers import thread_nice_values
from server_process import ServerProcess
from ziggurat_server.thread_priority import NICEST, thread_nice, thread_nice_supported

pytestmark = pytest.mark.skipif(not thread_nice_supported(),
                                reason="per-thread nice values exist on Linux only")


@pytest.mark.parametrize("nice, threads", [(3, 2), (0, 1)])
def test_the_frontend_flags_set_the_tokenising_threads_priority(
        tiny_model: TinyModel, tmp_path: Path, nice: int, threads: int) -> None:
    base = thread_nice()  # the server inherits the test's priority
    server = ServerProcess(tmp_path, "--model", str(tiny_model.gguf_path),
                           "--served-model-name", "tiny", "--num-kv-blocks", "64",
                           "--frontend-nice", str(nice), "--frontend-threads", str(threads))
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.base_url, timeout=60) as http:
            for index in range(3 * threads):
                response = http.post("/tokenize", json={"prompt": f"hello {index} " * 50})
                assert response.status_code == 200, response.text
        values = thread_nice_values(server.process.pid)
        assert values[server.process.pid] == base
        at_frontend_nice = [tid for tid, value in values.items()
                            if value == min(NICEST, base + nice)]
        if nice:  # (that the pool stays within its size: test_frontend_pool.py)
            assert at_frontend_nice, values
        # Besides the frontend's threads only the heap trimmer runs nicer than the server.
        assert set(values.values()) <= {base, min(NICEST, base + nice), NICEST}, values
    finally:
        server.stop()
