"""The adaptive thread count (engine/adaptive_threads.py) from injected host readings: a full team
gives a core back when the CPU pressure stall says others wait, a smaller one takes it back once
they leave it idle, dwell times bound the flapping, and without a signal nothing changes. The
parser is checked on the kernel's own text formats, and on this host's files where it has them."""

from __future__ import annotations

from pathlib import Path

import pytest
from ziggurat_core.engine.adaptive_threads import (
    MAX_DWELL_S,
    MIN_DWELL_S,
    WINDOW_S,
    AdaptiveThreads,
    HostCpuSample,
    parse_host_cpu,
    read_host_cpu,
)

PRESSURE = ("some avg10=2.82 avg60=5.67 avg300=5.58 total=27282861902\n"
            "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
STAT = ("cpu  4705 356 584 3699176 23060 0 277 0 0 0\n"
        "cpu0 1393 280 307 1849658 11546 0 177 0 0 0\n"
        "intr 1462898 0 0\n")


class FakeHost:
    """A host whose stall and idle time advance at the rates the test sets, on a fake clock."""

    def __init__(self) -> None:
        self.now = 100.0
        self.stall_s = 0.0
        self.idle_s = 0.0
        self.stall_rate = 0.0  # seconds of stall per second
        self.idle_cores = 0.0
        self.signal = True

    def clock(self) -> float:
        return self.now

    def read(self) -> HostCpuSample | None:
        return HostCpuSample(self.stall_s, self.idle_s) if self.signal else None

    def run(self, seconds: float, team: AdaptiveThreads, step_s: float = 0.05) -> list[int]:
        """Steps of `step_s` for `seconds`; the team size of each."""
        sizes = []
        for _ in range(round(seconds / step_s)):
            sizes.append(team.threads_for_step())
            self.now += step_s
            self.stall_s += self.stall_rate * step_s
            self.idle_s += self.idle_cores * step_s
        return sizes


def test_the_parser_reads_the_kernels_formats() -> None:
    sample = parse_host_cpu(PRESSURE, STAT, ticks_per_s=100)
    assert sample.stall_s == pytest.approx(27282.861902)
    assert sample.idle_s == pytest.approx((3699176 + 23060) / 100)
    with pytest.raises(ValueError):
        parse_host_cpu("full avg10=0.00 total=0\n", STAT, ticks_per_s=100)
    with pytest.raises(ValueError):
        parse_host_cpu(PRESSURE, "intr 1 2\n", ticks_per_s=100)


@pytest.mark.skipif(not Path("/proc/pressure/cpu").exists(), reason="this kernel has no CPU pressure file (PSI)")
def test_this_hosts_counters_are_read_and_only_grow() -> None:
    first = read_host_cpu()
    assert first is not None
    sum(i * i for i in range(200_000))
    second = read_host_cpu()
    assert second is not None
    assert second.stall_s >= first.stall_s and second.idle_s >= first.idle_s


def test_a_crowded_full_team_gives_one_core_back_and_takes_it_back_when_idle() -> None:
    host = FakeHost()
    team = AdaptiveThreads(4, read=host.read, clock=host.clock)
    host.stall_rate, host.idle_cores = 0.05, 0.0  # a quiet server's own event loop
    assert set(host.run(3.0, team)) == {4}
    host.stall_rate = 0.7  # a busy frontend
    sizes = host.run(3.0, team)
    assert sizes[0] == 4 and sizes[-1] == 3
    assert sizes.index(3) <= round(2 * WINDOW_S / 0.05) + 1  # within two windows
    assert team.yields == 1
    # still busy (the smaller team leaves it little idle): stays smaller well past the dwell
    host.stall_rate, host.idle_cores = 0.1, 0.2
    assert set(host.run(4 * MIN_DWELL_S, team)) == {3}
    # the others stop: the core comes back within a window once idle
    host.idle_cores = 0.9
    sizes = host.run(1.5, team)
    assert sizes[-1] == 4 and team.yields == 1


def test_the_smaller_team_keeps_its_size_for_the_dwell_and_backs_off_when_crowded_again() -> None:
    host = FakeHost()
    team = AdaptiveThreads(2, read=host.read, clock=host.clock)
    host.stall_rate, host.idle_cores = 0.7, 0.9  # crowded at full size, idle once smaller
    sizes = host.run(MIN_DWELL_S + 3 * WINDOW_S, team, step_s=0.05)
    first = sizes.index(1)
    back = sizes.index(2, first)
    assert (back - first) * 0.05 >= MIN_DWELL_S - 1e-9
    # crowded again at once: the next smaller period lasts twice as long, then four times ...
    dwells = []
    sizes = host.run(120.0, team, step_s=0.05)
    run_start = None
    for i, size in enumerate(sizes):
        if size == 1 and run_start is None:
            run_start = i
        elif size == 2 and run_start is not None:
            dwells.append((i - run_start) * 0.05)
            run_start = None
    assert len(dwells) >= 3
    assert dwells[0] >= 2 * MIN_DWELL_S - 1e-9 and dwells[1] >= 4 * MIN_DWELL_S - 1e-9
    assert max(dwells) <= MAX_DWELL_S + 2 * WINDOW_S


def test_without_a_signal_the_team_never_changes() -> None:
    host = FakeHost()
    host.signal = False
    team = AdaptiveThreads(2, read=host.read, clock=host.clock)
    host.stall_rate = 1.0
    assert not team.active and set(host.run(3.0, team)) == {2}
    # a signal lost midway leaves the configured team
    host.signal = True
    team = AdaptiveThreads(2, read=host.read, clock=host.clock)
    host.run(2.0, team)
    assert team.threads == 1
    host.signal = False
    assert set(host.run(1.0, team)[-5:]) == {2} and not team.active


def test_a_team_of_one_cannot_adapt() -> None:
    with pytest.raises(ValueError, match="no core to give back"):
        AdaptiveThreads(1, read=FakeHost().read)


def test_a_window_that_spans_a_pause_of_the_engine_is_not_judged() -> None:
    host = FakeHost()
    team = AdaptiveThreads(2, read=host.read, clock=host.clock)
    host.run(1.0, team)
    # The engine waits for work while something else crowds the host, then steps again.
    host.stall_rate = 0.9
    host.now += 5.0
    host.stall_s += 0.9 * 5.0
    host.stall_rate = 0.05
    assert set(host.run(2.0, team)) == {2} and team.yields == 0
    # Crowded while it steps: that is judged.
    host.stall_rate = 0.9
    assert host.run(1.0, team)[-1] == 1


def test_a_moderate_stall_keeps_the_full_team() -> None:
    # What a server's own event loop and a benchmark client at 32 streams cost the host.
    host = FakeHost()
    team = AdaptiveThreads(2, read=host.read, clock=host.clock)
    host.stall_rate = 0.3
    assert set(host.run(10.0, team)) == {2}
