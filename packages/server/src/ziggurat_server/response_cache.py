"""The response cache: finished responses, exactly as they were sent, kept under a key of
everything that shapes them (see response_caching.py), for repeated reproducible requests.

Bounded three ways: entries, bytes of JSON, and age (a time-to-live). The least recently served
entry goes first when a bound is reached; an expired one is dropped when it is next looked up or
when a new entry is stored. The clock is injectable so expiry can be tested without waiting.
The server's event loop is the only caller, so nothing here needs a lock.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from .metrics import ResponseCacheMetrics


@dataclass(frozen=True)
class CachedResponse:
    """One response as sent: the body's wire JSON, or each stream chunk's, in order."""

    bodies: tuple[str, ...]
    nbytes: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "nbytes", sum(len(body.encode()) for body in self.bodies))


@dataclass
class _Entry:
    response: CachedResponse
    expires_at: float


class ResponseCache:
    def __init__(self, max_entries: int, max_bytes: int, ttl_s: float,
                 metrics: ResponseCacheMetrics,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.metrics = metrics
        self.clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently served first
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, key: str) -> CachedResponse | None:
        """The live response under `key` (now the most recently served), counted as a hit or a
        miss."""
        entry = self._entries.get(key)
        if entry is not None and entry.expires_at <= self.clock():
            self._drop(key, "expired")
            entry = None
        if entry is None:
            self.metrics.misses.inc()
            return None
        self._entries.move_to_end(key)
        self.metrics.hits.inc()
        return entry.response

    def can_hold(self, response: CachedResponse) -> bool:
        return response.nbytes <= self.max_bytes

    def put(self, key: str, response: CachedResponse) -> bool:
        """Store `response` under `key`, evicting what the bounds require; False (nothing
        changed) when it is larger than the whole cache."""
        if not self.can_hold(response):
            return False
        if key in self._entries:
            self._drop(key, None)  # a replacement, not an eviction
        now = self.clock()
        for stale in [k for k, e in self._entries.items() if e.expires_at <= now]:
            self._drop(stale, "expired")
        while self._entries and (len(self._entries) >= self.max_entries
                                 or self._bytes + response.nbytes > self.max_bytes):
            self._drop(next(iter(self._entries)), "capacity")
        self._entries[key] = _Entry(response, now + self.ttl_s)
        self._bytes += response.nbytes
        self._update_gauges()
        return True

    def _drop(self, key: str, reason: str | None) -> None:
        entry = self._entries.pop(key)
        self._bytes -= entry.response.nbytes
        if reason is not None:
            self.metrics.evictions.labels(reason).inc()
        self._update_gauges()

    def _update_gauges(self) -> None:
        self.metrics.entries.set(len(self._entries))
        self.metrics.bytes.set(self._bytes)
