"""Small versions of the reliability scenarios (tests/server/stress_scenarios.py), so that
`make test` keeps guarding them; `benchmarks/stress.py` runs the heavy versions."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from fixtures_models import TinyModel
from server_process import ServerProcess
from stress_scenarios import concurrent_streams, kv_exhaustion


def test_concurrent_streams_with_cancellations_leave_nothing_behind(
        tiny_server: ServerProcess) -> None:
    report = asyncio.run(concurrent_streams(tiny_server.base_url, num_streams=48,
                                            cancel_fraction=0.25, max_tokens=16))
    assert report.problems == []
    assert report.figures["cancelled"] > 0
    assert report.figures["statuses"] == {"200": 48}


@pytest.fixture(scope="module")
def small_cache_server(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory
                       ) -> Iterator[ServerProcess]:
    # 12 blocks of 16 tokens: three of the 128-token requests fit at once, a dozen arrive.
    server = ServerProcess(tmp_path_factory.mktemp("small-cache-logs"),
                           "--model", str(tiny_model.gguf_path), "--served-model-name", "tiny",
                           "--num-kv-blocks", "12", "--max-model-len", "160",
                           "--max-num-seqs", "8")
    server.wait_ready()
    yield server
    server.stop()


def test_exhausted_kv_cache_completes_or_refuses_and_counts_preemptions(
        small_cache_server: ServerProcess) -> None:
    report = asyncio.run(kv_exhaustion(small_cache_server.base_url, num_requests=12,
                                       prompt_len=64, max_tokens=64, oversized=2,
                                       deadline_s=300))
    assert report.problems == [], small_cache_server.logs()
    assert report.figures["statuses"] == {"200": 12, "400": 2}
    assert report.figures["preemptions"] > 0
    assert small_cache_server.process.poll() is None
