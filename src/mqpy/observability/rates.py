"""Events counted per second over a fixed window.

A ring of per-second slots: counting an event is one index and one addition, and the
memory is the same however busy the broker gets. Used only from the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass

# The status feed's throughput chart: the whole broker, one point a second.
THROUGHPUT_SECONDS = 600
# Per-topic publish and delivery rates are averaged over this many seconds.
RATE_SECONDS = 60


class SecondCounts:
    """How many events happened in each of the last `size` seconds."""

    __slots__ = ("_counts", "_seconds", "_size", "latest")

    def __init__(self, size: int) -> None:
        self._size = size
        self._counts = [0] * size
        self._seconds = [-1] * size  # which second each slot counts
        self.latest = -1  # the last second anything was counted in

    def add(self, now: float, count: int = 1) -> None:
        second = int(now)
        slot = second % self._size
        if self._seconds[slot] != second:
            self._seconds[slot] = second
            self._counts[slot] = 0
            self.latest = max(self.latest, second)
        self._counts[slot] += count

    def at(self, second: int) -> int:
        slot = second % self._size
        return self._counts[slot] if self._seconds[slot] == second else 0

    def series(self, last_second: int, length: int) -> list[int]:
        """The counts of the `length` seconds that end with `last_second`, oldest first."""
        return [self.at(second) for second in range(last_second - length + 1, last_second + 1)]

    def per_second(self, now: float, window: int) -> float:
        """The mean rate over the last `window` seconds, the current one included."""
        return sum(self.series(int(now), min(window, self._size))) / window


@dataclass(frozen=True, slots=True)
class ThroughputPoint:
    """One second of the whole broker's traffic."""

    at: int  # Unix time of the second's start
    published: int
    delivered: int
    failed: int  # failed delivery attempts, retried or dead-lettered


class Throughput:
    """The whole broker's messages published, delivered and failed, per second."""

    __slots__ = ("delivered", "failed", "published")

    def __init__(self, size: int = THROUGHPUT_SECONDS) -> None:
        self.published = SecondCounts(size)
        self.delivered = SecondCounts(size)
        self.failed = SecondCounts(size)

    def series(self, now: float, length: int = THROUGHPUT_SECONDS) -> list[ThroughputPoint]:
        last = int(now)
        seconds = range(last - length + 1, last + 1)
        return [
            ThroughputPoint(
                second,
                self.published.at(second),
                self.delivered.at(second),
                self.failed.at(second),
            )
            for second in seconds
        ]


class TopicActivity:
    """One topic's recent publishes and deliveries, for its rates."""

    __slots__ = ("delivered", "published")

    def __init__(self) -> None:
        self.published = SecondCounts(RATE_SECONDS)
        self.delivered = SecondCounts(RATE_SECONDS)

    def idle(self, now: float) -> bool:
        """Nothing counted within the rate window."""
        return max(self.published.latest, self.delivered.latest) <= int(now) - RATE_SECONDS
