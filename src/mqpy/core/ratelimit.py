"""Token buckets: a steady rate with room for a burst, one bucket per key.

`RateLimiter` keeps its buckets in this process's memory; `GroupRateLimiter` keeps
them in the table a `--processes` group shares (group_state.py), so the group allows a
key the rate once, whichever of its processes the key's connections reach.
`publish_limiter` picks the one that fits."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from mqpy.core.group_state import GroupState

# Buckets idle long enough to be full again carry no information; past this many
# buckets those are dropped, so a flood of distinct keys cannot grow memory forever.
MAX_BUCKETS = 10_000
# What a process of a group takes from a key's shared bucket ahead of need: this share
# of the burst, split between the processes, spent within this many seconds.
CREDIT_SHARE = 0.125
CREDIT_SECONDS = 0.05


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """`rate` events per second per key, bursts of up to `burst`; rate 0 is no limit."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def acquire(self, key: str, cost: float = 1.0) -> float:
        """Take `cost` tokens; returns 0 if allowed, else the seconds until it would be."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._drop_full_buckets(now)
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens >= cost:
            bucket.tokens -= cost
            return 0.0
        return (cost - bucket.tokens) / self.rate

    def _drop_full_buckets(self, now: float) -> None:
        refill = self.burst / self.rate
        self._buckets = {k: b for k, b in self._buckets.items() if now - b.updated < refill}


class Limiter(Protocol):
    def acquire(self, key: str, cost: float = 1.0) -> float:
        """Take `cost` tokens; returns 0 if allowed, else the seconds until it would be."""
        ...


class GroupRateLimiter:
    """`rate` events per second per key for a whole `--processes` group of `processes`.

    Taking tokens from the group's table costs a lock that every process of the group
    wants at once under load (publishes through 64 connections spent about 35 µs more
    CPU each that way, bench `publish` with `--processes 2`). So a process takes a few
    tokens more than it needs (`CREDIT_SHARE` of the burst, split between the
    processes) and spends them first, for up to `CREDIT_SECONDS`; what is left then goes
    back. At any moment the processes hold at most that share of the burst between
    them, which another process's client may find missing: a refusal a little early,
    never a key let past its rate.

    A key whose bucket finds no room in the group's table (it is full) gets the
    process's share instead (`rate / processes`, as each process alone would allow)."""

    def __init__(
        self, rate: float, burst: float, group: GroupState, kind: str, processes: int
    ) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self._group = group
        self._kind = kind
        self._extra = self.burst * CREDIT_SHARE / processes
        self._credits: dict[str, _Credit] = {}
        self._share = RateLimiter(
            rate / processes, max(1.0, self.burst / processes), time.monotonic
        )

    def acquire(self, key: str, cost: float = 1.0) -> float:
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        credit = self._credits.get(key)
        if credit is not None:
            if now - credit.since <= CREDIT_SECONDS and credit.tokens >= cost:
                credit.tokens -= cost
                return 0.0
            self._give_back(key, credit)
        taken = self._group.acquire(self._kind, key, self.rate, self.burst, cost, self._extra)
        if taken is None:
            return self._share.acquire(key, cost)
        wait, extra = taken
        if extra > 0:
            if len(self._credits) >= MAX_BUCKETS:
                self._give_back_stale(now)
            self._credits[key] = _Credit(extra, now)
        return wait

    def _give_back(self, key: str, credit: _Credit) -> None:
        del self._credits[key]
        if credit.tokens > 0:
            self._group.level(self._kind, key, self.rate, self.burst, -credit.tokens)

    def _give_back_stale(self, now: float) -> None:
        for key, credit in list(self._credits.items()):
            if now - credit.since > CREDIT_SECONDS:
                self._give_back(key, credit)


@dataclass(slots=True)
class _Credit:
    """Tokens a process took from the group's bucket ahead of need, and since when."""

    tokens: float
    since: float


def publish_limiter(
    rate: float,
    burst: float,
    clock: Callable[[], float],
    group: GroupState | None = None,
    processes: int = 1,
) -> Limiter:
    """--publish-rate and --publish-burst: the group's buckets in a group, else this
    process's own."""
    if group is None or rate <= 0:
        # A group whose table could not be opened: each process keeps to its share.
        return RateLimiter(rate / processes, max(1.0, burst / processes), clock)
    return GroupRateLimiter(rate, burst, group, "publish", processes)


def retry_after_header(seconds: float) -> str:
    """Retry-After takes whole seconds; round up so a client that obeys it succeeds."""
    return str(max(1, math.ceil(seconds)))
