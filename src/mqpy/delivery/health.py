"""Per-receiver health: when a receiver is down, back off the receiver, not only the
delivery.

Without this, each pending delivery of a receiver that refuses connections retries on
its own schedule: a storm of doomed attempts that spends workers, sockets and store
writes that healthy receivers share. Instead, a failure that says "the receiver is
unavailable" (no connection, no answer in time, 5xx, 429) pauses the whole receiver
for a backoff that grows with consecutive failures; when the pause ends a single
delivery goes as a probe, and the first success lifts the pause.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Failing:
    failures: int
    paused_until: float


class ReceiverHealth:
    """Which receivers are paused, and how many deliveries each may be handed now."""

    def __init__(self, backoff: Callable[[int], float]) -> None:
        self._backoff = backoff
        self._failing: dict[int, _Failing] = {}

    def succeeded(self, subscription_id: int) -> None:
        self._failing.pop(subscription_id, None)

    def failed(
        self,
        subscription_id: int,
        now: float,
        retry_after: float | None = None,
        backoff: Callable[[int], float] | None = None,
    ) -> None:
        """`backoff` is the receiver's own, when its subscription sets one."""
        state = self._failing.setdefault(subscription_id, _Failing(0, now))
        state.failures += 1
        pause = (backoff or self._backoff)(state.failures)
        if retry_after is not None:
            pause = max(pause, retry_after)
        state.paused_until = max(state.paused_until, now + pause)

    def forget(self, subscription_id: int) -> None:
        self._failing.pop(subscription_id, None)

    def allowance(self, subscription_id: int, now: float, cap: int) -> int:
        """How many deliveries the receiver may hold: its cap when healthy, none while
        paused, one (the probe) once the pause is over."""
        state = self._failing.get(subscription_id)
        if state is None:
            return cap
        return 0 if now < state.paused_until else min(1, cap)

    def paused_or_probing(self) -> list[int]:
        """Receivers whose last delivery failed for want of the receiver."""
        return list(self._failing)

    def failures(self, subscription_id: int) -> int:
        state = self._failing.get(subscription_id)
        return 0 if state is None else state.failures

    def next_resume_at(self, now: float) -> float | None:
        """When the earliest paused receiver may be probed, if any is paused."""
        upcoming = [s.paused_until for s in self._failing.values() if s.paused_until > now]
        return min(upcoming, default=None)
