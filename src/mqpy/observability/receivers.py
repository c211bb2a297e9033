"""What an operator wants to know of each receiver: is it keeping up, and if not, why."""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

RECENT_FAILURES = 10


class ReceiverState(enum.StrEnum):
    HEALTHY = "healthy"  # the last attempt succeeded, or none was made yet
    RETRYING = "retrying"  # its latest attempts failed; each delivery retries on its own
    # Its latest attempts failed for want of the receiver (no connection, 5xx, 429):
    # it gets fewer at once, and after a run of them is paused and probed (window.py).
    FAILING = "failing"
    # Paused by an operator (POST /v1/subscriptions/{id}/pause): nothing is sent to it
    # until it is resumed, whatever its last attempts did.
    PAUSED = "paused"


@dataclass(frozen=True, slots=True)
class Failure:
    """One failed attempt, without the message body."""

    at: float
    message_id: str
    attempt: int
    reason: str
    status: int | None


class ReceiverActivity:
    """A receiver's deliveries since this process started."""

    __slots__ = (
        "consecutive_failures",
        "in_flight",
        "last_success_at",
        "recent_failures",
        "unavailable",
        "window",
    )

    def __init__(self) -> None:
        self.in_flight = 0
        self.last_success_at: float | None = None
        self.consecutive_failures = 0
        self.unavailable = False
        self.window: int | None = None
        self.recent_failures: deque[Failure] = deque(maxlen=RECENT_FAILURES)

    def succeeded(self, at: float) -> None:
        self.last_success_at = at
        self.consecutive_failures = 0
        self.unavailable = False

    def failed(self, failure: Failure, *, unavailable: bool) -> None:
        self.consecutive_failures += 1
        self.unavailable = unavailable
        self.recent_failures.append(failure)

    @property
    def state(self) -> ReceiverState:
        if self.unavailable:
            return ReceiverState.FAILING
        if self.consecutive_failures:
            return ReceiverState.RETRYING
        return ReceiverState.HEALTHY
