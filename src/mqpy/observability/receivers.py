"""What an operator wants to know of each receiver: is it keeping up, and if not, why."""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

from mqpy.model.domain import ReceiverHealth

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
    # Disabled by the broker: every attempt failed for its disable-after. Nothing is sent
    # to it until it is resumed; its messages wait.
    DISABLED = "disabled"


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
        "last_failure_at",
        "last_success_at",
        "recent_failures",
        "unavailable",
        "window",
    )

    def __init__(self) -> None:
        self.in_flight = 0
        self.last_success_at: float | None = None
        self.last_failure_at: float | None = None
        self.consecutive_failures = 0
        self.unavailable = False
        self.window: int | None = None
        self.recent_failures: deque[Failure] = deque(maxlen=RECENT_FAILURES)

    def succeeded(self, at: float) -> None:
        self.last_success_at = at
        self.consecutive_failures = 0
        self.unavailable = False

    def failed(self, failure: Failure, *, unavailable: bool) -> None:
        self.last_failure_at = failure.at
        self.consecutive_failures += 1
        self.unavailable = unavailable
        self.recent_failures.append(failure)

    @classmethod
    def restored(cls, health: ReceiverHealth) -> ReceiverActivity:
        """As saved before a restart: its last success, and its last failure if any."""
        activity = cls()
        activity.last_success_at = health.last_success_at
        activity.last_failure_at = health.last_failure_at
        activity.consecutive_failures = health.consecutive_failures
        activity.unavailable = health.unavailable
        if health.last_failure_at is not None and health.last_error is not None:
            activity.recent_failures.append(
                Failure(
                    health.last_failure_at,
                    health.last_message_id or "",
                    health.last_attempt or 0,
                    health.last_error,
                    health.last_status,
                )
            )
        return activity

    @property
    def last_error(self) -> str | None:
        """What its latest failed attempt said, if it has one."""
        return self.recent_failures[-1].reason if self.recent_failures else None

    def health(self, subscription_id: int) -> ReceiverHealth:
        """What to save of it for after a restart."""
        last = self.recent_failures[-1] if self.recent_failures else None
        return ReceiverHealth(
            subscription_id,
            self.last_success_at,
            self.last_failure_at,
            self.consecutive_failures,
            self.unavailable,
            last.reason if last else None,
            last.status if last else None,
            last.message_id if last else None,
            last.attempt if last else None,
        )

    @property
    def state(self) -> ReceiverState:
        if self.unavailable:
            return ReceiverState.FAILING
        if self.consecutive_failures:
            return ReceiverState.RETRYING
        return ReceiverState.HEALTHY
