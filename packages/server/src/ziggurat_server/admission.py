"""Overload control: refuse new work (429) once too many sequences wait for a decode slot."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ServerHTTPError

RETRY_AFTER_SECONDS = 1


@dataclass
class AdmissionControl:
    """Counts the sequences the server has handed to the engine and not yet seen finish.

    At most `max_running` of them decode at once; the rest wait. Counting on the server side
    (not from the engine's scheduler) means requests that arrived but are not yet scheduled
    count as waiting, so a burst cannot slip past the limit. Only the event loop thread calls
    this, so plain integers suffice.
    """

    max_running: int
    max_waiting: int
    in_flight: int = 0

    @property
    def waiting(self) -> int:
        return max(0, self.in_flight - self.max_running)

    def can_admit(self, num_seqs: int) -> bool:
        if self.in_flight == 0:
            return True  # an idle server takes any single request, however large its n
        return self.in_flight + num_seqs - self.max_running <= self.max_waiting

    def admit(self, num_seqs: int) -> None:
        """Take `num_seqs` slots or raise a 429; a refused request changes nothing."""
        if not self.can_admit(num_seqs):
            raise ServerHTTPError(
                429,
                f"The server is overloaded: {self.waiting} sequences are already waiting "
                f"(limit {self.max_waiting}). Retry after {RETRY_AFTER_SECONDS}s.",
                error_type="rate_limit_error", code="queue_full",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        self.in_flight += num_seqs

    def release(self, num_seqs: int) -> None:
        self.in_flight = max(0, self.in_flight - num_seqs)
