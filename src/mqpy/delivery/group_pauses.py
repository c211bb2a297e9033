"""A failing receiver's pause and probe, kept together by a `--processes` group.

Each process keeps its own adaptive window for a receiver (window.py), but a receiver
that stopped answering is paused for the whole group: when one process pauses it, the
others hold off until the same time, and when the pause runs out only one process
sends the probe. That process holds the probe until the probe's answer (a success
lifts the pause for all; a failure pauses the receiver again, for longer) or, if it
died or never sent it, until `probe_seconds` pass.

The pauses live in the group's shared table (core/group_state.py). Reading a pause
takes the table's lock, so what was read is kept until the table's version moves; a
receiver nobody paused costs one unlocked read per look.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from mqpy.core.group_state import GroupState, SharedPause


class GroupPauses:
    """The group's pauses of receivers, in the caller's clock."""

    def __init__(self, group: GroupState, clock: Callable[[], float], probe_seconds: float) -> None:
        self._group = group
        self._clock = clock
        self._probe_seconds = probe_seconds
        self._seen_version = -1
        self._seen: dict[int, SharedPause | None] = {}

    def state(self, subscription_id: int) -> SharedPause | None:
        """The receiver's pause as the group knows it (`pauses` 0: not paused); None if
        the group's table has no room for it, and the process keeps its own."""
        self._forget_stale()
        if subscription_id not in self._seen:
            self._seen[subscription_id] = self._group.pause_of(str(subscription_id))
        return self._seen[subscription_id]

    def _forget_stale(self) -> None:
        """Forget what was read of the pauses once any of them changed."""
        version = self._group.version()
        if version != self._seen_version:
            self._seen.clear()
            self._seen_version = version

    def probe(self, subscription_id: int, shared: SharedPause, cap: int) -> int:
        """How many deliveries this process may start to a receiver the group paused:
        none before the pause ends, then one if this process holds the probe."""
        now = time.monotonic()
        if now < shared.until:
            return 0
        mine = shared.probe_owner == self._group.pid and now < shared.probe_until
        if mine or self._group.claim_probe(str(subscription_id), self._probe_seconds):
            return min(1, cap)
        return 0

    def holds_probe(self, subscription_id: int) -> bool:
        shared = self.state(subscription_id)
        return shared is not None and shared.pauses > 0 and shared.probe_owner == self._group.pid

    def pauses(self, subscription_id: int) -> int:
        """The receiver's pauses in a row, as the group counts them."""
        shared = self.state(subscription_id)
        return 0 if shared is None else shared.pauses

    def pause(self, subscription_id: int, until: float, now: float, pauses: int) -> None:
        """Pause the receiver for the group until `until` (by the caller's clock, whose
        time now is `now`); a probe this process held is given back."""
        self._group.pause(str(subscription_id), time.monotonic() + (until - now), pauses)

    def resume(self, subscription_id: int) -> None:
        """The receiver answered: if the group paused it, that pause is over."""
        shared = self.state(subscription_id)
        if shared is not None and shared.pauses:
            self._group.resume(str(subscription_id))

    def release_probe(self, subscription_id: int) -> None:
        """Give back a probe this process claimed and has nothing to send with."""
        if self.holds_probe(subscription_id):
            self._group.release_probe(str(subscription_id))

    def until(self, subscription_id: int) -> float | None:
        """Until when the group paused the receiver, by the caller's clock, or None."""
        shared = self.state(subscription_id)
        if shared is None or not shared.pauses:
            return None
        return self._clock() + (shared.until - time.monotonic())

    def next_look_at(self, now: float) -> float | None:
        """When a pause this process knows of ends, or another's probe lapses: when to
        look again, by the caller's clock."""
        self._forget_stale()
        mono = time.monotonic()
        times = [
            at
            for shared in self._seen.values()
            if shared is not None and shared.pauses
            for at in (shared.until, shared.probe_until)
            if at > mono
        ]
        return None if not times else now + (min(times) - mono)

    def forget(self, subscription_id: int) -> None:
        self._group.resume(str(subscription_id))
        self._seen.pop(subscription_id, None)
