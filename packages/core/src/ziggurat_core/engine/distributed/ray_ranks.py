"""Tensor-parallel ranks as Ray actors, for an engine that runs where Ray is in use (a replica,
or a process that connected to Ray itself): Ray owns, places and reports its worker processes,
instead of processes spawned behind its back. Imported only then.

Each rank other than 0 is an actor on rank 0's node (the ranks meet on rank 0's loopback store)
that runs `worker_main`. It reserves no Ray CPU: the replica that starts the engine reserved the
cores for all of its ranks. `RayRank` offers the part of `multiprocessing.Process` the runner
uses (start, is_alive, join, kill, pid, exitcode, name), so the runner treats both alike.
"""

from __future__ import annotations

import os
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from .worker import worker_main


class RankActor:
    """The process of one rank: `run` blocks for the rank's whole life."""

    def pid(self) -> int:
        return os.getpid()

    def run(self, *args: Any) -> None:
        worker_main(*args)


class RayRank:
    def __init__(self, args: tuple[Any, ...], name: str) -> None:
        self.name = name
        self.pid: int | None = None
        self.exitcode: int | None = None
        self._args = args
        node = ray.get_runtime_context().get_node_id()
        self._actor: Any = ray.remote(RankActor).options(
            num_cpus=0, max_restarts=0, max_task_retries=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
        ).remote()
        self._run: Any = None

    def start(self) -> None:
        self.pid = int(ray.get(self._actor.pid.remote()))
        self._run = self._actor.run.remote(*self._args)

    def is_alive(self) -> bool:
        if self._run is None or self.exitcode is not None:
            return False
        ready, _ = ray.wait([self._run], timeout=0)
        if not ready:
            return True
        try:
            ray.get(self._run)
            self.exitcode = 0
        except Exception:  # the actor died (killed) or its rank raised
            self.exitcode = 1
        return False

    def join(self, timeout: float | None = None) -> None:
        if self._run is None:
            return
        ray.wait([self._run], timeout=timeout)
        if not self.is_alive():
            self.kill()  # the rank has ended; its actor's process has nothing left to do

    def kill(self) -> None:
        ray.kill(self._actor, no_restart=True)
