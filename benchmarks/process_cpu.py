"""Where the CPU went during a benchmark window (Linux /proc): each thread of a process by its
nice value, this benchmark's own processes, and the whole machine, so that a figure measured
on a shared host says how busy the host was.

    before = CpuSnapshot.take(server_pid, client_pids)
    ...  # the window
    usage = before.until(CpuSnapshot.take(server_pid, client_pids))   # cores used, by group
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01


@dataclass(frozen=True)
class ThreadTimes:
    nice: int
    cpu_s: float  # user + system


def thread_times(pid: int) -> dict[int, ThreadTimes]:
    """Every thread of `pid` by thread id (threads that end meanwhile are left out)."""
    threads = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        # Fields after the name start at field 3: utime is 14, stime 15, nice 19.
        threads[int(task.name)] = ThreadTimes(int(fields[16]),
                                              (int(fields[11]) + int(fields[12])) * TICK_S)
    return threads


def process_cpu_s(pid: int) -> float:
    """User + system time of `pid`, all its threads (ended ones too)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S


def machine_busy_s() -> float:
    """CPU seconds all cores spent on anything but idle and I/O wait since boot."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) * TICK_S


@dataclass(frozen=True)
class CpuSnapshot:
    at: float
    server_pid: int
    server_threads: dict[int, ThreadTimes]
    clients_s: float
    machine_s: float

    @classmethod
    def take(cls, server_pid: int, client_pids: list[int]) -> CpuSnapshot:
        return cls(time.perf_counter(), server_pid, thread_times(server_pid),
                   sum(process_cpu_s(pid) for pid in client_pids), machine_busy_s())

    def until(self, later: CpuSnapshot) -> dict[str, Any]:
        """Cores used between this snapshot and `later` (CPU seconds per second): the server's
        main thread (its event loop), its other threads by nice value, the benchmark's own
        processes, and the rest of the machine."""
        wall = later.at - self.at
        used: dict[str, float] = {}
        main_nice = later.server_threads.get(self.server_pid, ThreadTimes(0, 0.0)).nice
        for tid, times in later.server_threads.items():
            spent = times.cpu_s - self.server_threads.get(tid, ThreadTimes(0, 0.0)).cpu_s
            if tid == self.server_pid:
                group = "server_event_loop"
            elif times.nice == main_nice:
                group = "server_other_threads_nice_as_server"  # engine step + OpenMP, anyio
            else:
                group = f"server_threads_nice_{times.nice}"
            used[group] = used.get(group, 0.0) + spent
        server = sum(used.values())
        clients = later.clients_s - self.clients_s
        machine = later.machine_s - self.machine_s
        cores = {name: round(value / wall, 3) for name, value in sorted(used.items())}
        cores["benchmark_clients"] = round(clients / wall, 3)
        cores["rest_of_machine"] = round(max(0.0, machine - server - clients) / wall, 3)
        return {"wall_s": round(wall, 2), "cores_used": cores}
