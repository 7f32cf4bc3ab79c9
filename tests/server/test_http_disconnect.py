"""A client that goes away mid-request has its engine request aborted and its KV blocks freed."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import httpx
from server_helpers import metric_value

ABORTED = 'ziggurat_request_finished_total{finish_reason="abort"}'
# Long enough that the request is still generating when the client leaves.
LONG_REQUEST = {"prompt": [5, 6, 7, 8], "max_tokens": 240, "ignore_eos": True}


def engine_stats(client: httpx.Client) -> dict[str, Any]:
    stats: dict[str, Any] = client.get("/v1/info").json()["engine"]["stats"]
    return stats


def wait_until_idle(client: httpx.Client, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    stats = engine_stats(client)
    while time.monotonic() < deadline:
        stats = engine_stats(client)
        if stats["running"] == 0 and stats["waiting"] == 0 and stats["kv_blocks_used"] == 0:
            return stats
        time.sleep(0.02)
    raise AssertionError(f"engine still busy after the client left: {stats}")


def test_disconnect_mid_stream_frees_kv_blocks(client: httpx.Client,
                                               tiny_server: Any) -> None:
    wait_until_idle(client)
    aborted_before = metric_value(client.get("/metrics").text, ABORTED)
    with httpx.Client(base_url=tiny_server.base_url, timeout=60.0) as streamer, streamer.stream(
            "POST", "/v1/completions", json={**LONG_REQUEST, "stream": True}) as response:
        lines = response.iter_lines()
        received = 0
        for line in lines:
            if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["text"]:
                received += 1
                if received == 2:
                    break
        busy = engine_stats(client)
        assert busy["running"] == 1 and busy["kv_blocks_used"] > 0
    # Leaving both context managers closed the connection mid-stream.
    idle = wait_until_idle(client)
    assert idle["kv_blocks_used"] == 0
    assert metric_value(client.get("/metrics").text, ABORTED) == aborted_before + 1


def test_disconnect_while_waiting_for_a_full_response(client: httpx.Client,
                                                      tiny_server: Any) -> None:
    wait_until_idle(client)
    aborted_before = metric_value(client.get("/metrics").text, ABORTED)
    body = json.dumps(LONG_REQUEST).encode()
    request = (f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
               ).encode() + body
    with socket.create_connection(("127.0.0.1", tiny_server.port)) as raw:
        raw.sendall(request)
        deadline = time.monotonic() + 30
        while engine_stats(client)["running"] == 0:
            assert time.monotonic() < deadline, "the request never started"
            time.sleep(0.01)
    idle = wait_until_idle(client)
    assert idle["kv_blocks_used"] == 0
    assert metric_value(client.get("/metrics").text, ABORTED) == aborted_before + 1
