"""What an operator wants to know of each receiver: is it keeping up, and if not, why."""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

RECENT_FAILURES = 10


class ReceiverState(enum.StrEnum):
    HEALTHY = "healthy"  # the last attempt succeeded, or none was made yet
    RETRYING = "retrying"  # its latest attempts failed; each delivery retries on its own
    FAILING = "failing"  # down as a whole: held back, then probed (delivery/health.py)
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
        "paused",
        "recent_failures",
    )

    def __init__(self) -> None:
        self.in_flight = 0
        self.last_success_at: float | None = None
        self.consecutive_failures = 0
        self.paused = False
        self.recent_failures: deque[Failure] = deque(maxlen=RECENT_FAILURES)

    def succeeded(self, at: float) -> None:
        self.last_success_at = at
        self.consecutive_failures = 0
        self.paused = False

    def failed(self, failure: Failure, *, paused: bool) -> None:
        self.consecutive_failures += 1
        self.paused = paused
        self.recent_failures.append(failure)

    @property
    def state(self) -> ReceiverState:
        if self.paused:
            return ReceiverState.FAILING
        if self.consecutive_failures:
            return ReceiverState.RETRYING
        return ReceiverState.HEALTHY
