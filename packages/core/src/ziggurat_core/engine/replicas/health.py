"""What the set knows of each replica: its state ("up", or "restarting" after its process was
lost), kept from a periodic heartbeat polled by a thread of its own, and the reports made from
it (`/v1/info`'s replica list, the set's combined stats, the hardware)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import ray

from ..errors import ReplicaUnavailableError
from ..reports import DeviceInfo, EngineStats, ReplicaReport
from .actor import ReplicaHeartbeat
from .faults import ReplicaLost, unwrap
from .router import ReplicaRouter
from .stats import combine_stats

logger = logging.getLogger("ziggurat.replicas")

HEARTBEAT_INTERVAL_S = 0.5


@dataclass
class ReplicaHandle:
    index: int
    actor: Any  # ray.actor.ActorHandle of ReplicaActor
    state: str = "starting"  # "starting" | "up" | "restarting"
    heartbeat: ReplicaHeartbeat | None = None
    pending: Any = None  # the heartbeat ObjectRef in flight


class ReplicaHealth:
    """The replicas' states. `lock` is the set's: it also guards the router's counts, which
    change together with the states (a lost replica's prefixes are forgotten)."""

    def __init__(self, actors: list[Any], router: ReplicaRouter, lock: threading.Lock,
                 stopping: threading.Event) -> None:
        self.replicas = [ReplicaHandle(index, actor, state="up")
                         for index, actor in enumerate(actors)]
        self._router = router
        self._lock = lock
        self._stopping = stopping  # set by the set's shutdown
        self._thread = threading.Thread(target=self._heartbeat_loop, daemon=True,
                                        name="ziggurat-replica-heartbeat")

    def start(self, first_timeout: float) -> None:
        """Take every replica's first heartbeat (waiting up to `first_timeout`), then poll."""
        self._poll(timeout=first_timeout)
        self._thread.start()

    def join(self) -> None:
        if self._thread.is_alive():
            self._thread.join()

    def live(self, excluding: set[int]) -> list[int]:
        """The replicas up, but those in `excluding`; the caller holds the lock."""
        return [r.index for r in self.replicas if r.state == "up" and r.index not in excluding]

    def is_up(self, index: int) -> bool:
        return self.replicas[index].state == "up"

    def mark_lost(self, index: int) -> None:
        with self._lock:
            replica = self.replicas[index]
            if replica.state == "up":
                logger.warning("replica %d stopped; Ray restarts it", index)
                replica.state = "restarting"
                self._router.forget(index)

    def unavailable(self) -> ReplicaUnavailableError:
        states = ", ".join(f"{r.index}: {r.state}" for r in self.replicas)
        return ReplicaUnavailableError(f"no replica is up to serve the request ({states}); "
                                       "retry shortly")

    # ------------------------------------------------------------------ heartbeats
    def _heartbeat_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._poll(timeout=HEARTBEAT_INTERVAL_S)
            except Exception:  # a failed poll must not end the polling: states would freeze
                logger.exception("replica heartbeat failed")
            self._stopping.wait(HEARTBEAT_INTERVAL_S)

    def _poll(self, timeout: float) -> None:
        """Ask every replica for a heartbeat (a call to a restarting replica waits for its new
        process) and apply the answers that come within `timeout`."""
        for replica in self.replicas:
            if replica.pending is None:
                replica.pending = replica.actor.heartbeat.remote()
        refs = [r.pending for r in self.replicas]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        answered = {ref.hex() for ref in ready}
        for replica in self.replicas:
            if replica.pending is None or replica.pending.hex() not in answered:
                continue
            ref, replica.pending = replica.pending, None
            try:
                heartbeat: ReplicaHeartbeat = ray.get(ref)
            except Exception as exc:
                if isinstance(unwrap(exc), ReplicaLost):
                    self.mark_lost(replica.index)
                    continue
                raise
            with self._lock:
                if replica.heartbeat is not None and replica.heartbeat.pid != heartbeat.pid:
                    self._router.forget(replica.index)  # a new process: an empty prefix cache
                if replica.state != "up":
                    logger.info("replica %d is up (pid %d)", replica.index, heartbeat.pid)
                replica.state = "up"
                replica.heartbeat = heartbeat

    # ------------------------------------------------------------------ reports
    def reports(self) -> list[ReplicaReport]:
        with self._lock:
            return [ReplicaReport(
                id=r.index, state=r.state,
                node=r.heartbeat.node if r.heartbeat else None,
                pid=r.heartbeat.pid if r.heartbeat else None,
                stats=r.heartbeat.stats if r.heartbeat else None,
                outstanding=self._router.outstanding[r.index],
                tensor_parallel_size=r.heartbeat.tensor_parallel_size if r.heartbeat else None,
            ) for r in self.replicas]

    def stats(self, started_at: float, errored: bool) -> EngineStats:
        """The live replicas' latest stats, combined."""
        with self._lock:
            snapshots = [r.heartbeat.stats for r in self.replicas
                         if r.heartbeat is not None and r.state == "up"]
        return combine_stats(snapshots, uptime_s=time.time() - started_at, errored=errored)

    def device_info(self) -> DeviceInfo:
        with self._lock:
            for replica in self.replicas:
                if replica.heartbeat is not None:
                    return replica.heartbeat.device_info
        raise self.unavailable()
