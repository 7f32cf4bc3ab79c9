"""SIGTERM past --shutdown-timeout on a real server process: requests still waiting get a 503
with Retry-After, a running stream ends with an error event and `[DONE]`; never a 500, never a
stream cut without a word."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest
from fixtures_models import TinyModel
from server_helpers import DONE, parse_sse
from server_process import ServerProcess

LONG_STREAM = {"prompt": [5, 6, 7, 8], "max_tokens": 200, "ignore_eos": True, "stream": True}
LONG_COMPLETION = {**LONG_STREAM, "stream": False}


def test_requests_left_at_the_shutdown_timeout_end_cleanly(
        tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> None:
    # One decode slot and no time to drain: one request runs, the others wait, and SIGTERM
    # ends them all at once.
    server = ServerProcess(tmp_path_factory.mktemp("shutdown-logs"),
                           "--model", str(tiny_model.gguf_path), "--served-model-name", "tiny",
                           "--max-num-seqs", "1", "--shutdown-timeout", "0")
    bodies = [LONG_STREAM, LONG_STREAM, LONG_COMPLETION, LONG_STREAM]
    results: list[dict[str, Any]] = [{} for _ in bodies]
    try:
        server.wait_ready()
        first_event = threading.Event()

        def call(index: int) -> None:
            with httpx.Client(base_url=server.base_url, timeout=180.0) as http, \
                    http.stream("POST", "/v1/completions", json=bodies[index]) as response:
                chunks = []
                for chunk in response.iter_text():
                    chunks.append(chunk)
                    first_event.set()
                results[index] = {"status": response.status_code, "headers": response.headers,
                                  "text": "".join(chunks)}

        callers = [threading.Thread(target=call, args=(i,)) for i in range(len(bodies))]
        callers[0].start()
        assert first_event.wait(60), server.logs()
        for caller in callers[1:]:
            caller.start()
        with httpx.Client(base_url=server.base_url, timeout=10.0) as probe:
            deadline = time.monotonic() + 60
            while probe.get("/v1/info").json()["engine"]["stats"]["waiting"] != 3:
                assert time.monotonic() < deadline, server.logs()
                time.sleep(0.01)
        server.terminate()
        for caller in callers:
            caller.join(60)
        assert server.process.wait(60) == 0, server.logs()
    finally:
        server.stop()
    assert "Traceback" not in server.stderr_path.read_text(), server.logs()
    outcomes = []
    for body, result in zip(bodies, results, strict=True):
        assert result, "a request got no answer"
        if result["status"] == 503:
            error = httpx.Response(503, content=result["text"]).json()["error"]
            assert error["code"] == "server_shutting_down"
            assert error["type"] == "service_unavailable_error"
            assert set(error) == {"message", "type", "param", "code"}
            assert result["headers"]["retry-after"] == "5"
            outcomes.append("refused")
            continue
        assert result["status"] == 200, result
        assert body["stream"], "a non-streaming request still running must get a 503"
        events = parse_sse(result["text"])
        assert events[-1] == DONE
        if "error" in events[-2]:
            error = events[-2]["error"]
            assert error["code"] == "server_shutting_down"
            assert set(error) == {"message", "type", "param", "code"}
            outcomes.append("ended")
        else:
            assert events[-2]["choices"][0]["finish_reason"] == "length"
            outcomes.append("finished")
    # At SIGTERM one stream was running and three requests waited for it.
    assert outcomes.count("refused") >= 2, outcomes
    assert "ended" in outcomes, outcomes
