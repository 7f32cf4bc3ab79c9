"""What a replica's failures look like to the set's callers: Ray's errors turned back into the
errors the engine raises in process, and the one error that means the replica itself went away."""

from __future__ import annotations

from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

from ..errors import ReplicaUnavailableError

LOST = (RayActorError, ActorUnavailableError)


class ReplicaLost(ReplicaUnavailableError):
    """The replica's process went away under a call: `generate` and `submit` retry a request
    that it had not started on another replica; one it had started fails with this error."""


def unwrap(exc: BaseException) -> BaseException:
    """What a replica raised, as the engine would have raised it in process."""
    if isinstance(exc, LOST):
        return ReplicaLost(str(exc))
    if isinstance(exc, RayTaskError) and isinstance(exc.cause, Exception):
        return exc.cause
    return exc
