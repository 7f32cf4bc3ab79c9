"""Retry decisions and delays (no I/O), plus the two sleep hooks tests replace.

Tenacity drives the loop; this module decides *whether* an exception is worth another attempt and
*how long* to wait: the server's Retry-After when it sent one (capped), else exponential backoff
with jitter.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import anyio

from ._exceptions import APIConnectionError, APIError

RETRYABLE_STATUSES = frozenset({408, 409, 429})


def is_retryable_status(status_code: int) -> bool:
    """408 and 409 are transient by definition, 429 asks us to come back, 5xx may recover."""
    return status_code in RETRYABLE_STATUSES or status_code >= 500


SHOULD_RETRY_HEADER = "x-should-retry"


def is_retryable_error(error: BaseException) -> bool:
    if isinstance(error, APIConnectionError):  # includes APITimeoutError
        return True
    if not isinstance(error, APIError) or error.status_code is None:
        return False
    # A server that knows better (a dead engine will not recover) can say so explicitly.
    verdict = {key.lower(): value for key, value in error.headers.items()}.get(SHOULD_RETRY_HEADER)
    if verdict is not None and verdict.strip().lower() in ("true", "false"):
        return verdict.strip().lower() == "true"
    return is_retryable_status(error.status_code)


def parse_retry_after(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """Seconds to wait from `Retry-After` (seconds or an HTTP date) or `retry-after-ms`.

    Returns None when the server sent none or sent something unreadable; never negative.
    """
    lowered = {key.lower(): value for key, value in headers.items()}
    milliseconds = lowered.get("retry-after-ms")
    if milliseconds is not None:
        try:
            return max(0.0, float(milliseconds) / 1000.0)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        when = when.replace(tzinfo=UTC)
    current = now if now is not None else utc_now()
    return max(0.0, (when - current).total_seconds())


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class RetryPolicy:
    """How many retries and how long between them."""

    max_retries: int
    initial_delay_s: float = 0.5
    max_delay_s: float = 8.0
    # A server asking for minutes would stall the caller; past this we wait the cap and try.
    max_retry_after_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")

    def delay_s(self, retry_number: int, retry_after_s: float | None = None) -> float:
        """The wait before retry `retry_number` (1 for the first retry)."""
        if retry_after_s is not None:
            return min(retry_after_s, self.max_retry_after_s)
        backoff = min(self.initial_delay_s * 2 ** (retry_number - 1), self.max_delay_s)
        # Jitter spreads the retries of many clients that failed at the same moment.
        return backoff * random.uniform(0.5, 1.0)


def sleep(seconds: float) -> None:
    """The sync client's sleep between attempts; tests replace it to avoid waiting."""
    time.sleep(seconds)


async def async_sleep(seconds: float) -> None:
    """The async client's sleep between attempts (works under asyncio and trio)."""
    await anyio.sleep(seconds)
