"""Give one core back to the host while other work waits for CPU (`EngineConfig.adaptive_threads`).

Where the engine's OpenMP team has a thread on every core the engine may use, any other runnable
work (the server's event loop and tokenising pool, a client on the same host, another process)
must take a core from the team, and every parallel region of the model then waits for the thread
that lost its core: the running streams' inter-token latency jumps several-fold in bursts
(docs/reliability.md). A team one thread smaller is a little slower per step but leaves that work
a core of its own. No torch here: this decides the count, the engine applies it.

The signals are the kernel's own:
- in a full team, the CPU pressure stall (`/proc/pressure/cpu`, "some": the share of time any
  runnable task waited for a CPU) says the team is crowded;
- in a smaller team, the idle CPU time (`/proc/stat`) says whether the others still use the core
  it gave up; when they leave most of it idle, the team takes it back.
Each decision looks at a window of at least WINDOW_S of steps (one that spans a pause of the
engine is not judged). A smaller team keeps its size for at least
a dwell time, so that a brief lull does not bring the crowding straight back; one crowded again
soon after taking its core back stays smaller twice as long the next time (up to MAX_DWELL_S).
Where either signal is missing (no PSI, not Linux) the team keeps its configured size.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

WINDOW_S = 0.25
# A window longer than this spanned a pause of the engine's (nothing to run): what the host did
# meanwhile says nothing of the team, so it is not judged, only restarted.
STALE_WINDOW_S = 4 * WINDOW_S
# Stall share that makes a full team give a core back. A server's own event loop and a client
# on the same cores, at 32 streams, stay far below it; a frontend tokenising long prompts, or a
# process busy on a core, far above.
STALL_TO_YIELD = 0.4
# Idle cores (out of the whole host) that make a smaller team take its core back: the others
# leave most of the freed core unused.
IDLE_TO_RECLAIM = 0.6
MIN_DWELL_S = 2.0
MAX_DWELL_S = 32.0
# A full team that lasts this long resets the smaller team's dwell to MIN_DWELL_S.
SETTLED_S = 10.0


@dataclass(frozen=True)
class HostCpuSample:
    """Cumulative counters of the host's CPUs, in seconds since boot."""

    stall_s: float  # time some runnable task waited for a CPU (PSI "some")
    idle_s: float  # idle time summed over every CPU (idle + iowait)


def parse_host_cpu(pressure: str, stat: str, ticks_per_s: float) -> HostCpuSample:
    """The sample in the texts of `/proc/pressure/cpu` and `/proc/stat`; ValueError if either
    lacks its line."""
    some = next((line for line in pressure.splitlines() if line.startswith("some ")), None)
    cpu = next((line for line in stat.splitlines() if line.startswith("cpu ")), None)
    if some is None or cpu is None:
        raise ValueError("no 'some' line in the CPU pressure, or no 'cpu' line in /proc/stat")
    fields = dict(item.split("=", 1) for item in some.split()[1:])
    columns = cpu.split()[1:]
    idle_ticks = int(columns[3]) + int(columns[4])  # idle, iowait
    return HostCpuSample(stall_s=int(fields["total"]) / 1e6, idle_s=idle_ticks / ticks_per_s)


def read_host_cpu() -> HostCpuSample | None:
    """The host's sample now, or None where the kernel does not give both (no PSI, not Linux)."""
    try:
        pressure = Path("/proc/pressure/cpu").read_text()
        stat = Path("/proc/stat").read_text()
        return parse_host_cpu(pressure, stat, os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, KeyError, IndexError, AttributeError):
        return None


class AdaptiveThreads:
    """The team size for each step: `max_threads`, or one fewer while other work is crowded out.

    Call `threads_for_step()` before each step; it reads the host at most once per WINDOW_S."""

    def __init__(self, max_threads: int, *,
                 read: Callable[[], HostCpuSample | None] = read_host_cpu,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_threads < 2:
            raise ValueError(f"a team of {max_threads} thread(s) has no core to give back")
        self.max_threads = max_threads
        self.threads = max_threads
        self.yields = 0  # times the team gave a core back
        self._read = read
        self._clock = clock
        self._dwell_s = MIN_DWELL_S
        now = clock()
        self._changed_at = now - SETTLED_S  # as if the full team had long settled
        self._window_start = now
        self._sample = read()

    def threads_for_step(self) -> int:
        previous = self._sample
        if previous is None:
            return self.threads
        now = self._clock()
        elapsed = now - self._window_start
        if elapsed < WINDOW_S:
            return self.threads
        sample = self._read()
        if sample is None:  # the signal went away: keep the configured team from now on
            self._sample, self.threads = None, self.max_threads
            return self.threads
        if elapsed > STALE_WINDOW_S:
            self._sample, self._window_start = sample, now
            return self.threads
        stall = (sample.stall_s - previous.stall_s) / elapsed
        idle_cores = (sample.idle_s - previous.idle_s) / elapsed
        self._sample, self._window_start = sample, now
        full = self.threads == self.max_threads
        if full and stall >= STALL_TO_YIELD:
            # Crowded again soon after taking the core back: stay smaller longer this time.
            settled = now - self._changed_at >= SETTLED_S
            self._dwell_s = MIN_DWELL_S if settled else min(2 * self._dwell_s, MAX_DWELL_S)
            self.threads = self.max_threads - 1
            self.yields += 1
            self._changed_at = now
        elif not full and now - self._changed_at >= self._dwell_s and idle_cores >= IDLE_TO_RECLAIM:
            self.threads = self.max_threads
            self._changed_at = now
        return self.threads

    @property
    def active(self) -> bool:
        """False where the host gives no signal: the team never changes."""
        return self._sample is not None
