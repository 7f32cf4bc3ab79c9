"""Which replica serves a request: least outstanding requests, with prefix affinity. No Ray, no
torch: the replica set asks it, then tells it when a request starts and ends.

Affinity: a prompt of at least `prefix_tokens` tokens is keyed by a hash of its first
`prefix_tokens` token ids; the replica that served that key last has those blocks in its prefix
cache, so it gets the request again unless it has `max_imbalance` more outstanding requests than
the least busy live replica (then the prefix is cheaper to recompute than to wait for).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Collection, Sequence

DEFAULT_PREFIX_TOKENS = 64
DEFAULT_MAX_IMBALANCE = 4
DEFAULT_MAX_KEYS = 4096


def prefix_key(prompt_token_ids: Sequence[int] | None, prefix_tokens: int) -> bytes | None:
    """The affinity key of a prompt, or None when it is too short to be worth keeping together."""
    if prompt_token_ids is None or len(prompt_token_ids) < prefix_tokens:
        return None
    digest = hashlib.blake2b(digest_size=16)
    for token_id in prompt_token_ids[:prefix_tokens]:
        digest.update(int(token_id).to_bytes(4, "little", signed=False))
    return digest.digest()


class ReplicaRouter:
    """Counts outstanding requests per replica and remembers which replica holds which prefix."""

    def __init__(self, num_replicas: int, *, prefix_tokens: int = DEFAULT_PREFIX_TOKENS,
                 max_imbalance: int = DEFAULT_MAX_IMBALANCE, max_keys: int = DEFAULT_MAX_KEYS,
                 ) -> None:
        if num_replicas < 1:
            raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
        self.prefix_tokens = prefix_tokens
        self.max_imbalance = max_imbalance
        self._max_keys = max_keys
        self.outstanding = [0] * num_replicas
        self._owners: OrderedDict[bytes, int] = OrderedDict()  # least recently used first

    def choose(self, key: bytes | None, live: Collection[int]) -> int | None:
        """The replica for a request with affinity `key` among `live` ones; None when none is
        live. Changes nothing: call `start` with the answer."""
        if not live:
            return None
        least = min(live, key=lambda index: (self.outstanding[index], index))
        owner = self._owners.get(key) if key is not None else None
        if owner is not None and owner in live and (
                self.outstanding[owner] - self.outstanding[least] <= self.max_imbalance):
            return owner
        return least

    def start(self, index: int, key: bytes | None) -> None:
        """A request with affinity `key` went to replica `index`; it now holds that prefix."""
        self.outstanding[index] += 1
        if key is not None:
            self._owners[key] = index
            self._owners.move_to_end(key)
            while len(self._owners) > self._max_keys:
                self._owners.popitem(last=False)

    def finish(self, index: int) -> None:
        self.outstanding[index] -= 1

    def forget(self, index: int) -> None:
        """Replica `index` restarted with an empty cache: its prefixes are gone."""
        for key in [key for key, owner in self._owners.items() if owner == index]:
            del self._owners[key]
