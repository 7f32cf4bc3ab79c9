"""Engine replicas (data parallel) on Ray. `ReplicaSet` is imported lazily: importing this
package imports neither Ray nor torch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .router import ReplicaRouter, prefix_key

if TYPE_CHECKING:
    from .replica_set import ReplicaSet


def __getattr__(name: str) -> Any:
    if name == "ReplicaSet":
        from .replica_set import ReplicaSet

        return ReplicaSet
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ReplicaRouter", "ReplicaSet", "prefix_key"]
