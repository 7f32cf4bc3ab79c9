"""Start-up, responsiveness during generation, and SIGTERM draining of a real server process."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from fixtures_models import TinyModel
from server_helpers import DONE, parse_sse
from server_process import ServerProcess

LONG_STREAM = {"prompt": [5, 6, 7, 8], "max_tokens": 200, "ignore_eos": True, "stream": True,
               "stream_options": {"include_usage": True}}
SHORTER_STREAM = {**LONG_STREAM, "max_tokens": 100}


def test_health_answers_during_a_long_generation(client: httpx.Client,
                                                 tiny_server: ServerProcess) -> None:
    with httpx.Client(base_url=tiny_server.base_url, timeout=60.0) as streamer, \
            streamer.stream("POST", "/v1/completions", json=SHORTER_STREAM) as response:
        lines = response.iter_lines()
        next(line for line in lines if line.startswith("data: "))
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        # The generation was still going when /health answered.
        assert client.get("/v1/info").json()["engine"]["stats"]["running"] == 1
        rest = "\n".join(lines)
    assert "data: [DONE]" in rest


def test_sigterm_drains_in_flight_requests_then_exits_0(
        tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> None:
    # One decode slot: of three streams one runs and two wait, so draining takes a while.
    server = ServerProcess(tmp_path_factory.mktemp("sigterm-logs"),
                           "--model", str(tiny_model.gguf_path), "--served-model-name", "tiny",
                           "--max-num-seqs", "1", "--shutdown-timeout", "120")
    streams: list[list[str]] = [[], [], []]
    try:
        server.wait_ready()
        first_event = threading.Event()

        def consume(index: int) -> None:
            with httpx.Client(base_url=server.base_url, timeout=180.0) as http, \
                    http.stream("POST", "/v1/completions", json=LONG_STREAM) as response:
                for chunk in response.iter_text():
                    streams[index].append(chunk)
                    first_event.set()

        readers = [threading.Thread(target=consume, args=(i,)) for i in range(3)]
        for reader in readers:
            reader.start()
        assert first_event.wait(60), server.logs()
        with httpx.Client(base_url=server.base_url, timeout=10.0) as probe:
            deadline = time.monotonic() + 60
            while probe.get("/v1/info").json()["engine"]["stats"]["waiting"] != 2:
                assert time.monotonic() < deadline, server.logs()
                time.sleep(0.01)
        server.terminate()
        # New connections are refused while the streams drain.
        refused = False
        while any(reader.is_alive() for reader in readers):
            try:
                httpx.get(f"{server.base_url}/health", timeout=1.0)
            except (httpx.ConnectError, httpx.RemoteProtocolError):
                # Refused, or accepted into the closing listener's backlog and dropped unanswered.
                refused = True
                break
            time.sleep(0.01)
        for reader in readers:
            reader.join(180)
        assert server.process.wait(60) == 0, server.logs()
    finally:
        server.stop()
    assert refused, "the server kept accepting connections after SIGTERM"
    for chunks in streams:
        events = parse_sse("".join(chunks))
        assert events[-1] == DONE
        assert events[-2]["usage"]["completion_tokens"] == LONG_STREAM["max_tokens"]
        assert events[-3]["choices"][0]["finish_reason"] == "length"
    # Start-up printed one line with the URL.
    assert f"Serving tiny at {server.base_url}/v1" in server.stdout_path.read_text()


def test_load_failure_exits_with_an_error(tmp_path_factory: pytest.TempPathFactory) -> None:
    log_dir = tmp_path_factory.mktemp("bad-model-logs")
    broken = log_dir / "broken.gguf"
    broken.write_bytes(b"GGUF this is not a model")
    server = ServerProcess(log_dir, "--model", str(broken))
    try:
        code = server.process.wait(120)
    finally:
        server.stop()
    assert code == 1
    stderr = server.stderr_path.read_text()
    assert "ziggurat-server: error: the model failed to load" in stderr
    assert "Traceback" not in stderr.split("ziggurat-server: error:")[1]
