"""What gpu_check.py judges its readings by: pure functions of the numbers a GPU run produced,
so they are tested on any machine (tests/core/test_gpu_check.py)."""

from __future__ import annotations

from typing import Any

# Peak memory bandwidth (bytes/s) by device name, from the vendors' data sheets; used where
# torch does not report the memory clock and bus width.
KNOWN_PEAK_BANDWIDTH = {
    "H200": 4.8e12,
    "H100 SXM": 3.35e12,
    "H100 PCIe": 2.0e12,
    "H100 NVL": 3.9e12,
    "A100-SXM4-80GB": 2.039e12,
    "A100-SXM4-40GB": 1.555e12,
    "A100-PCIE-80GB": 1.935e12,
    "A100-PCIE-40GB": 1.555e12,
    "L40S": 0.864e12,
    "L4": 0.3e12,
    "A10G": 0.6e12,
    "T4": 0.32e12,
    "RTX 4090": 1.008e12,
}



def first_difference(reference: list[int], candidate: list[int]) -> int | None:
    """The first position where the two token lists differ (a length difference counts at
    the shorter one's end); None where they are equal."""
    for position, (ref, cand) in enumerate(zip(reference, candidate, strict=False)):
        if ref != cand:
            return position
    if len(reference) != len(candidate):
        return min(len(reference), len(candidate))
    return None


def judge_greedy_parity(
    reference: list[int],
    candidate: list[int],
    reference_top_logprobs: list[dict[int, float]],
    tie_nats: float,
) -> dict[str, Any]:
    """Whether `candidate` (bfloat16 greedy) agrees with `reference` (float32 greedy).

    Equal lists pass. Otherwise the first differing token must be a near-tie in the reference:
    the candidate's token is among the reference's top log-probabilities at that position
    (`reference_top_logprobs[i]`: token id -> logprob) and within `tie_nats` of the reference's
    token. Tokens after that one are not compared: their contexts differ."""
    position = first_difference(reference, candidate)
    if position is None:
        return {"passed": True, "identical": True, "first_difference": None}
    verdict: dict[str, Any] = {"passed": False, "identical": False, "first_difference": position}
    if position >= min(len(reference), len(candidate)):
        verdict["why"] = "one output stops early where the other continues"
        return verdict
    if position >= len(reference_top_logprobs):
        verdict["why"] = "no reference log-probabilities at the first difference"
        return verdict
    top = reference_top_logprobs[position]
    ref_token, cand_token = reference[position], candidate[position]
    if ref_token not in top or cand_token not in top:
        verdict["why"] = f"token {cand_token} is not among the reference's top tokens there"
        return verdict
    gap = top[ref_token] - top[cand_token]
    verdict["logprob_gap"] = gap
    verdict["passed"] = gap <= tie_nats
    if not verdict["passed"]:
        verdict["why"] = f"the reference preferred its token by {gap:.3f} nats > {tie_nats}"
    return verdict


def peak_bandwidth(name: str, memory_clock_khz: int | None, bus_width_bits: int | None) -> tuple[float | None, str]:
    """The device's peak memory bandwidth in bytes/s and where the figure came from: the
    memory clock and bus width torch reports (double data rate), else the data-sheet table."""
    if memory_clock_khz and bus_width_bits:
        return 2 * memory_clock_khz * 1e3 * bus_width_bits / 8, "memory clock x bus width"
    for known, value in sorted(KNOWN_PEAK_BANDWIDTH.items(), key=lambda kv: -len(kv[0])):
        if known in name:
            return value, f"data sheet ({known})"
    return None, "unknown device"


def bandwidth_fraction(bytes_per_step: int, step_seconds: float, peak_bytes_per_s: float | None) -> float | None:
    """Bytes read per decode step over the step's time, as a fraction of the peak."""
    if peak_bytes_per_s is None or step_seconds <= 0:
        return None
    return bytes_per_step / step_seconds / peak_bytes_per_s


def judge_memory(profile: dict[str, Any] | None, used_bytes: int, graphs_captured: bool) -> dict[str, Any]:
    """Whether the engine kept to its share: `used_bytes` (device memory in use, total less
    free) within gpu_memory_utilization x total, and captured graphs within what the profile
    set aside for them. Without a profile (a size was given) there is nothing to judge."""
    if profile is None:
        return {"passed": True, "profiled": False, "used_bytes": used_bytes}
    share = int(profile["total_bytes"] * profile["gpu_memory_utilization"])
    verdict: dict[str, Any] = {
        "profiled": True,
        "used_bytes": used_bytes,
        "share_bytes": share,
        "within_share": used_bytes <= share,
        "graph_bytes_set_aside": profile.get("cuda_graph_bytes"),
        "graph_bytes_measured": profile.get("cuda_graph_measured_bytes"),
    }
    graphs_ok = True
    if graphs_captured:
        measured = profile.get("cuda_graph_measured_bytes")
        graphs_ok = measured is not None and measured <= (profile.get("cuda_graph_bytes") or 0)
    verdict["graphs_within_set_aside"] = graphs_ok
    verdict["passed"] = bool(verdict["within_share"]) and graphs_ok
    return verdict
