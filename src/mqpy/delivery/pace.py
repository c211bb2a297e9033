"""A receiver's own pace: at most `rate` deliveries started per second (a token
bucket holding up to one second's worth), so a small service is not flooded.

In a group of `share` processes (`--processes N`) each process keeps to its share of
the rate, and of the bucket (at least one delivery), so together they keep to it."""

from __future__ import annotations

import math


class Pace:
    """Tokens for one receiver; the dispatcher claims no more than are available."""

    def __init__(self, rate: float, now: float, share: int = 1) -> None:
        self.rate = rate  # the subscription's own, for the whole group
        self._rate = rate / share  # what this process keeps to
        self._capacity = max(1.0, self._rate)
        self._tokens = self._capacity
        self._updated = now

    def _refill(self, now: float) -> None:
        self._tokens = min(self._capacity, self._tokens + (now - self._updated) * self._rate)
        self._updated = now

    def available(self, now: float) -> int:
        """How many deliveries may start now."""
        self._refill(now)
        return max(0, math.floor(self._tokens))

    def take(self, now: float) -> None:
        self._refill(now)
        self._tokens -= 1.0

    def next_at(self, now: float) -> float:
        """When the next delivery may start."""
        self._refill(now)
        missing = max(0.0, 1.0 - self._tokens)
        return now + missing / self._rate
