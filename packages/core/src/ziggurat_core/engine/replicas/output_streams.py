"""The replicas' output streams: one Ray streaming generator per replica (`ReplicaActor.outputs`,
one item per engine step for all its requests), each read by a thread of its own that hands the
items to the set. A stream that ends or fails means its replica was lost: its requests fail,
and the stream is opened again once Ray has restarted the replica."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import ray

from .actor import RequestFailure
from .deltas import OutputDelta
from .faults import ReplicaLost, unwrap
from .health import ReplicaHandle, ReplicaHealth

logger = logging.getLogger("ziggurat.replicas")

# How often a stream thread looks whether its restarting replica is back.
STREAM_REOPEN_POLL_S = 0.05
STREAM_JOIN_TIMEOUT_S = 5.0

Dispatch = Callable[[int, list[OutputDelta | RequestFailure]], None]
FailRequests = Callable[[int, BaseException], None]


class OutputStreams:
    def __init__(self, health: ReplicaHealth, stopping: threading.Event, dispatch: Dispatch,
                 fail_requests: FailRequests) -> None:
        """`dispatch(index, items)` takes each item of replica `index`'s stream;
        `fail_requests(index, error)` ends its requests when the replica is lost."""
        self._health = health
        self._stopping = stopping  # set by the set's shutdown
        self._dispatch = dispatch
        self._fail_requests = fail_requests
        self._threads = [threading.Thread(target=self._consume, args=(replica,), daemon=True,
                                          name=f"ziggurat-replica-{replica.index}-outputs")
                         for replica in health.replicas]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self) -> None:
        for thread in self._threads:
            thread.join(STREAM_JOIN_TIMEOUT_S)

    def _consume(self, replica: ReplicaHandle) -> None:
        while not self._stopping.is_set():
            if replica.state != "up":
                self._stopping.wait(STREAM_REOPEN_POLL_S)
                continue
            stream = replica.actor.outputs.options(num_returns="streaming").remote()
            try:
                for ref in stream:
                    self._dispatch(replica.index, ray.get(ref))
                raise ReplicaLost("the replica's output stream ended")
            except Exception as exc:
                if self._stopping.is_set():
                    return
                error = unwrap(exc)
                if not isinstance(error, ReplicaLost):
                    logger.error("replica %d output stream failed: %r", replica.index, error)
                self._health.mark_lost(replica.index)
                self._fail_requests(replica.index, ReplicaLost(str(error)))
