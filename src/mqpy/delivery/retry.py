"""The retry policy: pure functions of attempt number, age and the receiver's answer.

Backoff is exponential with full jitter (AWS's "Exponential Backoff and Jitter"): the
delay before attempt n+1 is uniform in [0, min(max_delay, base * 2**(n-1))], which
spreads a crowd of failing deliveries out instead of retrying them in lockstep.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace

from mqpy.model.domain import RetryOverrides

# The longest a receiver's Retry-After may put off its next attempt (and pause it), when
# --retry-max is shorter. The receiver knows best when it will be back, so its answer
# wins over --retry-max; this only stops a receiver parking a delivery for a year.
MAX_RETRY_AFTER_SECONDS = 3600.0


@dataclass(frozen=True, slots=True)
class RedeliveryPolicy:
    """When to try a failed delivery again, and when to give up on it."""

    base: float = 0.5
    max_delay: float = 300.0
    max_attempts: int = 10
    max_age: float = 86400.0

    def overridden_by(self, overrides: RetryOverrides) -> RedeliveryPolicy:
        """This policy with a subscription's own settings in place of the broker's."""
        if overrides == RetryOverrides():
            return self
        return replace(
            self,
            base=_pick(overrides.min_backoff_seconds, self.base),
            max_delay=_pick(overrides.max_backoff_seconds, self.max_delay),
            max_attempts=(
                self.max_attempts if overrides.max_attempts is None else overrides.max_attempts
            ),
            max_age=_pick(overrides.max_age_seconds, self.max_age),
        )

    def backoff(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait after failed attempt number `attempt` (1 is the first)."""
        ceiling = min(self.max_delay, self.base * 2.0 ** min(attempt - 1, 60))
        return rand() * ceiling

    def retry_after_wait(self, retry_after: float | None) -> float | None:
        """How long a receiver's Retry-After holds: as asked, up to an hour (or
        `max_delay`, when that is longer); None when it gave none."""
        if retry_after is None:
            return None
        return min(retry_after, max(MAX_RETRY_AFTER_SECONDS, self.max_delay))

    def next_attempt_at(
        self,
        *,
        attempt: int,
        published_at: float,
        now: float,
        retry_after: float | None = None,
        rand: Callable[[], float] = random.random,
    ) -> float | None:
        """When to make the next attempt after attempt `attempt` failed, or None when
        the delivery should be dead-lettered.

        `retry_after` is the receiver's own Retry-After, which wins over the backoff,
        longer than `max_delay` too (bounded by `retry_after_wait`).
        """
        if attempt >= self.max_attempts:
            return None
        wait = self.retry_after_wait(retry_after)
        delay = wait if wait is not None else self.backoff(attempt, rand)
        due_at = now + delay
        if due_at - published_at > self.max_age:
            return None
        return due_at


def _pick(override: float | None, default: float) -> float:
    return default if override is None else override
