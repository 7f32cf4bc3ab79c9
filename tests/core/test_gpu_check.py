"""benchmarks/gpu_check.py: its answer on a machine without CUDA, and its pure helpers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from gpu_judgements import (  # noqa: E402
    bandwidth_fraction,
    first_difference,
    judge_greedy_parity,
    judge_memory,
    peak_bandwidth,
)


def test_without_cuda_it_says_so_in_json_and_exits_0() -> None:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # no GPU, even on a host that has one
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_check.py")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["cuda"] is False
    assert "no CUDA" in report["reason"]
    assert report["passed"] is None


@pytest.mark.parametrize(
    ("reference", "candidate", "expected"),
    [
        ([1, 2, 3], [1, 2, 3], None),
        ([1, 2, 3], [1, 5, 3], 1),
        ([1, 2, 3], [9, 2, 3], 0),
        ([1, 2, 3], [1, 2], 2),
        ([1, 2], [1, 2, 3], 2),
    ],
)
def test_first_difference(reference: list[int], candidate: list[int], expected: int | None) -> None:
    assert first_difference(reference, candidate) == expected


def test_identical_outputs_pass() -> None:
    verdict = judge_greedy_parity([1, 2, 3], [1, 2, 3], [], tie_nats=0.25)
    assert verdict == {"passed": True, "identical": True, "first_difference": None}


def test_drift_after_a_near_tie_passes_whatever_follows() -> None:
    tops = [{1: -0.1}, {2: -0.70, 7: -0.80, 8: -3.0}, {3: -0.2}]
    # Position 1: the reference took 2 (-0.70), the GPU 7 (-0.80): a 0.10-nat near-tie; the
    # tokens after it differ freely.
    verdict = judge_greedy_parity([1, 2, 3, 4], [1, 7, 42, 43], tops, tie_nats=0.25)
    assert verdict["passed"] is True
    assert verdict["first_difference"] == 1
    assert verdict["logprob_gap"] == pytest.approx(0.10)


def test_a_first_difference_that_is_no_tie_fails() -> None:
    tops = [{1: -0.1}, {2: -0.2, 8: -3.0}]
    verdict = judge_greedy_parity([1, 2, 3], [1, 8, 3], tops, tie_nats=0.25)
    assert verdict["passed"] is False
    assert verdict["logprob_gap"] == pytest.approx(2.8)


def test_a_token_outside_the_reference_top_fails() -> None:
    tops = [{1: -0.1, 4: -0.2}]
    verdict = judge_greedy_parity([1, 2], [5, 2], tops, tie_nats=0.25)
    assert verdict["passed"] is False
    assert "not among" in verdict["why"]


def test_an_output_that_stops_early_fails() -> None:
    verdict = judge_greedy_parity([1, 2, 3], [1, 2], [{1: 0.0}, {2: 0.0}, {3: 0.0}], tie_nats=0.25)
    assert verdict["passed"] is False
    assert verdict["first_difference"] == 2


def test_peak_bandwidth_from_clock_and_bus_else_the_data_sheet() -> None:
    # 2.619 GHz memory clock (double data rate) on a 5120-bit bus: 2 x 2.619e9 x 640 bytes.
    value, source = peak_bandwidth("NVIDIA H100 80GB HBM3", 2_619_000, 5120)
    assert value == pytest.approx(2 * 2.619e9 * 640)
    assert source == "memory clock x bus width"
    assert peak_bandwidth("NVIDIA H200", None, None) == (4.8e12, "data sheet (H200)")
    # The longest matching name wins: "L40S" is not read as "L4".
    assert peak_bandwidth("NVIDIA L40S", None, None)[0] == 0.864e12
    assert peak_bandwidth("Some Future GPU", None, None) == (None, "unknown device")


def test_bandwidth_fraction() -> None:
    # 270 MB of weights read in 1 ms: 270 GB/s, a tenth of 2.7 TB/s.
    assert bandwidth_fraction(270_000_000, 0.001, 2.7e12) == pytest.approx(0.1)
    assert bandwidth_fraction(1, 0.001, None) is None


GIB = 2**30
PROFILE = {"total_bytes": 80 * GIB, "gpu_memory_utilization": 0.9, "cuda_graph_bytes": GIB // 4,
           "cuda_graph_measured_bytes": GIB // 5}


def test_memory_within_the_share_and_graphs_within_their_set_aside_pass() -> None:
    verdict = judge_memory(PROFILE, 70 * GIB, graphs_captured=True)
    assert verdict["passed"] and verdict["within_share"] and verdict["graphs_within_set_aside"]
    assert verdict["share_bytes"] == 72 * GIB


def test_memory_beyond_the_share_fails() -> None:
    verdict = judge_memory(PROFILE, 73 * GIB, graphs_captured=True)
    assert verdict["passed"] is False and verdict["within_share"] is False


def test_graphs_beyond_their_set_aside_fail_and_unmeasured_graphs_too() -> None:
    overrun = dict(PROFILE, cuda_graph_measured_bytes=GIB // 3)
    assert judge_memory(overrun, 10 * GIB, graphs_captured=True)["passed"] is False
    unmeasured = dict(PROFILE, cuda_graph_measured_bytes=None)
    assert judge_memory(unmeasured, 10 * GIB, graphs_captured=True)["passed"] is False
    # Eager mode captures nothing: the graph figures are not judged.
    assert judge_memory(unmeasured, 10 * GIB, graphs_captured=False)["passed"] is True


def test_without_a_profile_nothing_is_judged() -> None:
    assert judge_memory(None, 99 * GIB, graphs_captured=True) == {
        "passed": True, "profiled": False, "used_bytes": 99 * GIB,
    }
