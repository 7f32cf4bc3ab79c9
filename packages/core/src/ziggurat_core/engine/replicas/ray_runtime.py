"""Joining or starting Ray for a replica set. With `replica_set`, the only modules that import
Ray, and only when replicas are asked for."""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
from typing import Any

logger = logging.getLogger("ziggurat.replicas")

LOCAL_HOST = "127.0.0.1"
# Settings of a local Ray instance this module starts (a cluster joined with an address keeps
# its own: set them there with `RAY_<name>` variables before `ray start`).
LOCAL_SYSTEM_CONFIG: dict[str, Any] = {
    # Ray lowers its workers' priority to nice 15 by default, for background tasks. A replica
    # is the serving engine: niced, it loses the cores to any other process on the host.
    "worker_niceness": 0,
    # Ray starts a pool of idle workers (one per CPU) for tasks that never come here: each one
    # is a Python process holding memory and taking CPU while the replicas load.
    "enable_worker_prestart": False,
    "prestart_worker_first_driver": False,
}


class RayConnection:
    """This process's connection to Ray, held by a thread of its own until `close`.

    A local Ray instance's processes (GCS, raylet) are started with a parent-death signal that
    fires when the *thread* that started them exits: started from the server's model-loading
    thread, they were killed as soon as loading finished. The keeper thread lives as long as the
    connection instead.
    """

    def __init__(self, address: str | None) -> None:
        # Read by Ray when it starts; an explicit user setting wins.
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        import ray

        self.owned = not ray.is_initialized()  # a test or notebook may have connected already
        self._closing = threading.Event()
        self._keeper: threading.Thread | None = None
        if not self.owned:
            return
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._keeper = threading.Thread(target=self._keep, args=(address, started), daemon=True,
                                        name="ziggurat-ray")
        self._keeper.start()
        started.result()  # re-raises a failed ray.init

    def _keep(self, address: str | None, started: concurrent.futures.Future[None]) -> None:
        import ray

        options: dict[str, Any] = {"include_dashboard": False, "configure_logging": False,
                                   "namespace": "ziggurat"}
        try:
            if address is None:
                # Loopback only: a local instance needs no network.
                ray.init(_node_ip_address=LOCAL_HOST, _system_config=LOCAL_SYSTEM_CONFIG,
                         **options)
            else:
                ray.init(address=address, **options)
        except BaseException as exc:
            started.set_exception(exc)
            return
        logger.info("connected to Ray: %s", ray.cluster_resources())
        started.set_result(None)
        self._closing.wait()
        ray.shutdown()

    def close(self) -> None:
        """Disconnect (and stop a local instance this connection started)."""
        self._closing.set()
        if self._keeper is not None:
            self._keeper.join()


def check_resources(num_replicas: int, cpus: float, gpus: float) -> None:
    """Fail at once, naming what is missing, when the cluster cannot ever hold the replicas
    (Ray would otherwise keep them pending forever)."""
    import ray

    available = ray.cluster_resources()
    for name, each in (("CPU", cpus), ("GPU", gpus)):
        needed = num_replicas * each
        if needed > available.get(name, 0.0) + 1e-9:
            raise ValueError(
                f"{num_replicas} replicas need {needed:g} {name}s in the Ray cluster, which has "
                f"{available.get(name, 0.0):g}; lower --replica-{name.lower()}s or --num-replicas, "
                "or add nodes")
