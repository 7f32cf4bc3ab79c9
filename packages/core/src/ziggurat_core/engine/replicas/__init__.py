"""Engine replicas (data parallel) on Ray. `ReplicaSet` (the server's engine) and
`ReplicaSetEngine` (InferenceEngine's request interface, for `LLM`) are imported lazily:
importing this package imports neither Ray nor torch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .router import ReplicaRouter, prefix_key

if TYPE_CHECKING:
    from .replica_set import ReplicaSet
    from .sync_engine import ReplicaSetEngine


def __getattr__(name: str) -> Any:
    if name == "ReplicaSet":
        from .replica_set import ReplicaSet

        return ReplicaSet
    if name == "ReplicaSetEngine":
        from .sync_engine import ReplicaSetEngine

        return ReplicaSetEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ReplicaRouter", "ReplicaSet", "ReplicaSetEngine", "prefix_key"]
