"""A receiver's own pace: at most `rate` deliveries started per second (a token
bucket holding up to one second's worth), so a small service is not flooded.

`Pace` keeps the bucket in this process; `GroupPace` keeps it in the table a
`--processes` group shares (core/group_state.py), so the group together starts no more
than the rate, whichever of its processes claims. `pace_for` picks the one that fits."""

from __future__ import annotations

import math
from typing import Protocol

from mqpy.core.group_state import GroupState


class Paces(Protocol):
    rate: float  # the subscription's own, for the whole group

    def available(self, now: float) -> int:
        """How many deliveries may start now."""
        ...

    def take(self, now: float) -> None:
        """One delivery was claimed without a reservation."""
        ...

    def reserve(self, now: float, wanted: int) -> int:
        """Take up to `wanted` deliveries' tokens before a claim: how many may start."""
        ...

    def give_back(self, now: float, count: int) -> None:
        """What a claim reserved and did not use."""
        ...

    def next_at(self, now: float) -> float:
        """When the next delivery may start."""
        ...


class Pace:
    """Tokens for one receiver; the dispatcher claims no more than are available.

    `share`: a group whose table has no room for this receiver keeps to the rate by
    each of its `share` processes keeping to its part (and a part of the bucket, at
    least one delivery)."""

    def __init__(self, rate: float, now: float, share: int = 1) -> None:
        self.rate = rate
        self._rate = rate / share  # what this process keeps to
        self._capacity = max(1.0, self._rate)
        self._tokens = self._capacity
        self._updated = now

    def _refill(self, now: float) -> None:
        self._tokens = min(self._capacity, self._tokens + (now - self._updated) * self._rate)
        self._updated = now

    def available(self, now: float) -> int:
        self._refill(now)
        return max(0, math.floor(self._tokens))

    def take(self, now: float) -> None:
        self._refill(now)
        self._tokens -= 1.0

    def reserve(self, now: float, wanted: int) -> int:
        granted = min(wanted, self.available(now))
        self._tokens -= granted
        return granted

    def give_back(self, now: float, count: int) -> None:
        self._refill(now)
        self._tokens = min(self._capacity, self._tokens + count)

    def next_at(self, now: float) -> float:
        self._refill(now)
        missing = max(0.0, 1.0 - self._tokens)
        return now + missing / self._rate


class GroupPace:
    """A receiver's pace for a whole `--processes` group of `processes`.

    A claim reserves its tokens first and gives back what it did not use, so processes
    claiming at once split the bucket rather than each claiming all it holds. Where
    the table is full, the process's share."""

    def __init__(
        self, subscription_id: int, rate: float, now: float, group: GroupState, processes: int
    ) -> None:
        self.rate = rate
        self._key = str(subscription_id)
        self._capacity = max(1.0, rate)
        self._group = group
        self._share = Pace(rate, now, processes)

    def _tokens(self, take: float) -> float | None:
        return self._group.level("pace", self._key, self.rate, self._capacity, take)

    def available(self, now: float) -> int:
        tokens = self._tokens(0.0)
        return self._share.available(now) if tokens is None else max(0, math.floor(tokens))

    def take(self, now: float) -> None:
        if self._tokens(1.0) is None:
            self._share.take(now)

    def reserve(self, now: float, wanted: int) -> int:
        granted = self._group.reserve("pace", self._key, self.rate, self._capacity, wanted)
        return self._share.reserve(now, wanted) if granted is None else granted

    def give_back(self, now: float, count: int) -> None:
        if self._tokens(-float(count)) is None:
            self._share.give_back(now, count)

    def next_at(self, now: float) -> float:
        tokens = self._tokens(0.0)
        if tokens is None:
            return self._share.next_at(now)
        return now + max(0.0, 1.0 - tokens) / self.rate


def pace_for(
    subscription_id: int, rate: float, now: float, group: GroupState | None, processes: int
) -> Paces:
    """The pace of a receiver: the group's in a group, else this process's own."""
    if group is None:
        return Pace(rate, now, processes)
    return GroupPace(subscription_id, rate, now, group, processes)
