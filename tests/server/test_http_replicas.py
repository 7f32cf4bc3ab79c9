"""Two engine replicas on a local Ray cluster behind the real server, driven with the openai SDK:
both take work, aborts free blocks on the replica that held them, and a killed replica is
restarted while the server keeps answering."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
from fixtures_models import TinyModel
from server_helpers import fresh_prompt, metric_value, thread_nice_values
from server_process import ServerProcess
from ziggurat_server.thread_priority import NICEST, thread_nice, thread_nice_supported

NUM_KV_BLOCKS = 128
WAIT_S = 120.0
ABORTED = 'ziggurat_request_finished_total{finish_reason="abort"}'


@pytest.fixture(scope="module")
def replica_server(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("replica-logs"),
                           "--model", str(tiny_model.gguf_path), "--served-model-name", "tiny",
                           "--num-replicas", "2", "--replica-cpus", "1",
                           "--num-kv-blocks", str(NUM_KV_BLOCKS), "--max-num-seqs", "64")
    server.wait_ready(timeout=300.0)
    yield server
    server.stop()


def _replicas(server: ServerProcess) -> list[dict[str, Any]]:
    info = httpx.get(f"{server.base_url}/v1/info", timeout=30.0).json()
    return sorted(info["replicas"], key=lambda replica: replica["id"])


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _all_up_and_idle(server: ServerProcess) -> bool:
    return all(r["state"] == "up" and r["running"] == 0 and r["waiting"] == 0
               and r["kv_blocks_used"] == 0 and r["outstanding"] == 0 for r in _replicas(server))


async def _stream_completion(sdk: openai.AsyncOpenAI, prompt: list[int], max_tokens: int,
                             started: asyncio.Event | None = None) -> int:
    stream = await sdk.completions.create(model="tiny", prompt=prompt, max_tokens=max_tokens,
                                          stream=True, extra_body={"ignore_eos": True})
    finish_reason = None
    text_chunks = 0
    async for chunk in stream:
        text_chunks += 1
        if started is not None:
            started.set()
        finish_reason = chunk.choices[0].finish_reason or finish_reason
    assert finish_reason == "length"
    return text_chunks


def test_info_lists_each_replica(replica_server: ServerProcess) -> None:
    replicas = _replicas(replica_server)
    assert [r["id"] for r in replicas] == [0, 1]
    assert all(r["state"] == "up" and r["node"] and r["pid"] for r in replicas)
    assert len({r["pid"] for r in replicas}) == 2  # two processes, two model copies
    assert all(r["kv_blocks_total"] == NUM_KV_BLOCKS for r in replicas)
    health = httpx.get(f"{replica_server.base_url}/health", timeout=30.0)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    info = httpx.get(f"{replica_server.base_url}/v1/info", timeout=30.0).json()
    assert info["engine"]["stats"]["kv_blocks_total"] == 2 * NUM_KV_BLOCKS
    # Each replica's engine runs unsplit (no --tensor-parallel-size).
    assert info["engine"]["resolved"]["tensor_parallel_size"] == 1
    assert [r["tensor_parallel_size"] for r in replicas] == [1, 1]


def test_the_replicas_render_chats_as_asked(replica_server: ServerProcess) -> None:
    """The template options cross to the replica that renders the conversation."""
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "The quick"}]
    options = {"add_generation_prompt": False, "continue_final_message": True,
               "chat_template_kwargs": {"system_note": "be brief"}}
    base = replica_server.base_url
    tokens = httpx.post(f"{base}/tokenize", json={"messages": messages, **options},
                        timeout=30.0).json()["tokens"]
    text = httpx.post(f"{base}/detokenize", json={"tokens": tokens}, timeout=30.0).json()["prompt"]
    assert text.startswith("system\nbe brief") and text.endswith("assistant\nThe quick")


def test_two_replicas_serve_32_concurrent_streams(replica_server: ServerProcess) -> None:
    _wait_for(lambda: _all_up_and_idle(replica_server), "idle replicas")
    before = [r["generation_tokens"] for r in _replicas(replica_server)]
    max_tokens = 6

    async def run() -> list[int]:
        async with openai.AsyncOpenAI(base_url=f"{replica_server.base_url}/v1", api_key="none",
                                      max_retries=0, timeout=120.0) as sdk:
            return await asyncio.gather(*(_stream_completion(sdk, fresh_prompt(12), max_tokens)
                                          for _ in range(32)))

    assert all(chunks >= 1 for chunks in asyncio.run(run()))

    def counted() -> bool:
        after = [r["generation_tokens"] for r in _replicas(replica_server)]
        return sum(after) - sum(before) == 32 * max_tokens

    _wait_for(counted, "the replicas' token counts")  # heartbeats lag the last tokens
    served = [a - b for a, b in zip([r["generation_tokens"] for r in _replicas(replica_server)],
                                    before, strict=True)]
    assert all(tokens > 0 for tokens in served), served


def test_the_frontend_threads_keep_the_servers_priority(replica_server: ServerProcess) -> None:
    # With replicas the frontend threads only wait on the replicas' tokenisers, so they keep
    # the server's priority (settings.REPLICA_FRONTEND_NICE).
    if not thread_nice_supported():
        pytest.skip("per-thread nice values exist on Linux only")
    base = thread_nice()  # the server inherits the test's priority
    with httpx.Client(base_url=replica_server.base_url, timeout=60) as http:
        for index in range(4):
            response = http.post("/v1/chat/completions", json={
                "model": "tiny", "max_tokens": 2,
                "messages": [{"role": "user", "content": f"hello {index}"}]})
            assert response.status_code == 200, response.text
    values = thread_nice_values(replica_server.process.pid)
    # Only the heap trimmer runs nicer than the server (at the in-process default, the
    # frontend's threads would be at base + 10: test_http_frontend_priority.py).
    assert set(values.values()) <= {base, NICEST}, values


def test_aborted_streams_free_blocks_on_their_replica(replica_server: ServerProcess) -> None:
    _wait_for(lambda: _all_up_and_idle(replica_server), "idle replicas")
    before = [r["generation_tokens"] for r in _replicas(replica_server)]
    aborted_before = metric_value(httpx.get(f"{replica_server.base_url}/metrics").text, ABORTED)
    max_tokens = 230  # long enough that each stream is still generating when its client leaves
    lines: list[Iterator[str]] = []
    with httpx.Client(base_url=replica_server.base_url, timeout=60.0) as http, \
            contextlib.ExitStack() as streams:
        for _ in range(4):  # opened one after another: least outstanding alternates replicas
            response = streams.enter_context(http.stream("POST", "/v1/completions", json={
                "model": "tiny", "prompt": fresh_prompt(16), "max_tokens": max_tokens,
                "stream": True, "ignore_eos": True}))
            assert response.status_code == 200
            # The request is running on its replica. (Dropping the line iterator would close
            # the connection, so each is kept.)
            lines.append(response.iter_lines())
            next(lines[-1])
    # Leaving the blocks closed the connections: the server aborts each request on its replica.
    assert metric_value(httpx.get(f"{replica_server.base_url}/metrics").text,
                        ABORTED) == aborted_before + 4

    def freed_after_work() -> bool:  # heartbeats lag: wait for ones taken after the streams
        replicas = _replicas(replica_server)
        return _all_up_and_idle(replica_server) and all(
            r["generation_tokens"] > b for r, b in zip(replicas, before, strict=True))

    _wait_for(freed_after_work, "every replica's blocks to be freed")
    served = [r["generation_tokens"] - b for r, b in zip(_replicas(replica_server), before,
                                                          strict=True)]
    # Each replica ran two of the streams and stopped them early, its blocks all freed: the
    # aborts reached the replica that held each request.
    assert all(tokens < 2 * max_tokens for tokens in served), served


def test_killed_replica_restarts_and_the_server_keeps_answering(
        replica_server: ServerProcess) -> None:
    _wait_for(lambda: _all_up_and_idle(replica_server), "idle replicas")
    victim = _replicas(replica_server)[0]

    async def run() -> tuple[list[BaseException | int], str, list[str | None]]:
        async with openai.AsyncOpenAI(base_url=f"{replica_server.base_url}/v1", api_key="none",
                                      max_retries=0, timeout=120.0) as sdk:
            started = [asyncio.Event() for _ in range(4)]
            # Long enough that each stream is still generating when the replica is killed.
            running = [asyncio.ensure_future(_stream_completion(sdk, fresh_prompt(12), 240, event))
                       for event in started]
            await asyncio.gather(*(event.wait() for event in started))
            os.kill(victim["pid"], signal.SIGKILL)
            await asyncio.wait(running, timeout=WAIT_S, return_when=asyncio.FIRST_EXCEPTION)
            health = (await asyncio.to_thread(
                httpx.get, f"{replica_server.base_url}/health", timeout=30.0)).json()
            # Requests that had not started when the replica died: none may be lost.
            later = await asyncio.gather(*(sdk.completions.create(
                model="tiny", prompt=fresh_prompt(8), max_tokens=4, extra_body={"ignore_eos": True})
                for _ in range(8)))
            for task in running:
                task.cancel()
            results = await asyncio.gather(*running, return_exceptions=True)
            return results, health["status"], [c.choices[0].finish_reason for c in later]

    results, health_status, later_finishes = asyncio.run(run())
    assert later_finishes == ["length"] * 8
    # The streams on the killed replica ended with the server's error event, not a hang.
    failed = [r for r in results if isinstance(r, openai.APIError)]
    assert failed, results
    assert all("replica" in str(error).lower() for error in failed), failed
    assert health_status == "degraded"  # the restarted process is still loading its model

    def restarted() -> bool:
        replicas = _replicas(replica_server)
        return replicas[0]["state"] == "up" and replicas[0]["pid"] != victim["pid"]

    _wait_for(restarted, "Ray to restart the replica")
    _wait_for(lambda: httpx.get(f"{replica_server.base_url}/health").json()["status"] == "ok",
              "health to recover")
