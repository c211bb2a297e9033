"""Instrument updates gathered in plain Python, written to prometheus_client in one go.

Every prometheus_client update takes a lock, and in a `--processes` group it is also a
write to a memory-mapped file: about 0.7 µs for a counter and 1.5 µs for a histogram
on the development machine. A delivery made nine of them, about 7 µs of the 90 µs of
CPU it cost. Gathered here they are a few additions, and `flush` writes each instrument
once, whatever happened since the last flush. `Metrics` flushes at every scrape of its
own process, when the server stops, and in a group every FLUSH_SECONDS, so what
another process's scrape reads of this one is at most that old.

These run on the event loop only, as do the flushes: no lock of their own.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence

from prometheus_client import Counter, Histogram

# In a group, how old another process's figures may be when one process is scraped.
FLUSH_SECONDS = 0.1


class PendingCounts:
    """Increments of one counter per label value (or of an unlabelled counter, under
    the label value None), not yet written."""

    __slots__ = ("_children", "_counter", "_counts")

    def __init__(self, counter: Counter) -> None:
        self._counter = counter
        self._children: dict[str | None, Counter] = {}
        self._counts: dict[str | None, int] = {}

    def add(self, label: str | None = None, count: int = 1) -> None:
        self._counts[label] = self._counts.get(label, 0) + count

    def flush(self) -> None:
        for label, count in self._counts.items():
            child = self._children.get(label)
            if child is None:
                child = self._children[label] = (
                    self._counter if label is None else self._counter.labels(label)
                )
            child.inc(count)
        self._counts.clear()


class PendingObservations:
    """Observations of one histogram not yet written: how many fell in each of its
    buckets, and their sum."""

    __slots__ = ("_bounds", "_counts", "_histogram", "_sum")

    def __init__(self, histogram: Histogram, buckets: Sequence[float]) -> None:
        self._histogram = histogram
        self._bounds = (*buckets, math.inf)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0

    def add(self, value: float) -> None:
        # The first bucket whose bound is >= value, as Histogram.observe counts it.
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value

    def flush(self) -> None:
        if not any(self._counts):
            return
        # prometheus_client has no call that adds many observations at once, so this
        # adds to the values Histogram.observe adds to: the sum, and each bucket's own
        # count (the exposition makes them cumulative). The test of this module checks
        # that the result reads exactly as observe() would have made it.
        buckets = self._histogram._buckets
        for index, count in enumerate(self._counts):
            if count:
                buckets[index].inc(count)
        self._histogram._sum.inc(self._sum)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
