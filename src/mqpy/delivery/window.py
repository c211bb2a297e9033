"""Adaptive concurrency per receiver: how many deliveries each receiver may hold.

No fixed number suits every receiver: one answers in a millisecond and takes a hundred
at once, another serialises its requests and drowns in four. So each receiver gets a
window, as a TCP sender has a congestion window (and as Pub/Sub push has its push
window), that starts small and follows what the receiver shows it can take:

- **Growing.** A quick 2xx while the receiver was using its whole window adds one to
  the window until the first sign of trouble (slow start: the window doubles each round
  trip), and one per window's worth afterwards (congestion avoidance), except below
  `INITIAL_WINDOW`, where it always grows by one per success. A receiver that
  is not using its window (the work is not there) does not grow it.
- **Shrinking.** A failure for want of the receiver (no connection, no answer in time,
  a 5xx, a 429) takes the window down to `DECREASE` of itself, and so does an answer
  much slower than the receiver's usual one (`SLOW_FACTOR` times its fastest recent
  answer, and at least `SLOW_MARGIN` more). Only once per round trip: the outcomes of
  deliveries sent before the last decrease do not shrink it again, so one bad moment
  costs one decrease, not one per delivery that was out at the time.
- **Overdue.** A delivery out for longer than an answer would take to count as slow is
  presumed hung: the window shrinks then (once per round trip, as above), without
  waiting for the timeout, and the delivery stops counting against the window. While
  the receiver still answers others quickly (within `RESPONSIVE_SECONDS`; an answer
  is any HTTP status, a 500 as much as a 2xx: it shows the receiver's server is there
  and answering), all of its hung deliveries stop counting, up to its cap: one that
  hangs on some requests at random keeps getting the rest. Otherwise only a window's
  worth stop counting, so a receiver that slowed down as a whole has at most twice its
  window out.
- **Never to nothing.** The window stays at one or more, so a flaky receiver keeps
  getting deliveries, fewer at once. Only a receiver that failed `DEAD_AFTER` times in
  a row with its window down to one is paused as a whole (in a row by the order they
  were sent: a delivery sent before one that succeeded does not count), for a backoff
  that grows with each pause; when it ends, one delivery goes as a probe, and the first
  success lifts the pause. A `Retry-After` in a failure pauses the receiver for that long, as asked.
- **Paused for the group.** In a `--processes` group the pause and the probe are the
  group's (group_pauses.py): a pause one process decides holds the others off until
  the same time, and one process of the group sends the probe. The windows themselves
  stay each process's own.

The window counts what the receiver holds: deliveries claimed for it, waiting in memory
or in flight. It is bounded above by the caller's cap (the subscription's
`max_concurrency`, else `--receiver-concurrency`, by default half of `--workers`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from mqpy.delivery.group_pauses import GroupPauses

# Where a receiver's window starts: small, as Pub/Sub push's does; slow start doubles
# it every round trip while the receiver keeps up.
INITIAL_WINDOW = 4
# What a failure or a slow answer leaves of the window (CUBIC's beta: gentler than
# TCP Reno's half, since one failed delivery is weaker evidence than a lost packet).
DECREASE = 0.7
# An answer is slow when it took this many times the receiver's fastest recent one...
SLOW_FACTOR = 4.0
# ...and at least this much longer in seconds: a fast receiver's answers vary by
# milliseconds with the broker's own load, which says nothing about the receiver.
SLOW_MARGIN = 0.05
# The fastest answer is remembered for one to two of these periods, so a receiver
# whose normal pace changed for good is judged by its new pace before long.
FASTEST_PERIOD_SECONDS = 10.0
# A receiver whose last quick answer (any HTTP status) is at most this old is
# answering: its overdue deliveries are hung requests, not a receiver that slowed down
# as a whole. Counting 2xx alone, a receiver failing most requests quickly at random
# looked stuck once a second passed without a success, and its hung requests held its
# window until they timed out (bench `flaky`, 5,000 messages: 11 acks/s).
RESPONSIVE_SECONDS = 1.0
# Failures in a row, with the window down to one, after which the receiver is paused.
# A receiver that refuses connections fails this many within milliseconds, which costs
# each of a few messages one attempt; one that fails three attempts in five at random
# does it once in 60 outcomes (0.6 ** 8), and with three in a row (0.6 ** 3) it would
# spend much of its time paused.
DEAD_AFTER = 8


@dataclass(slots=True)
class _Window:
    limit: float
    threshold: float  # slow start ends here
    shrunk_at: float = -math.inf  # when it last shrank
    streak: int = 0  # failures in a row, in the order they were sent
    latest_success_sent_at: float = -math.inf  # the latest-sent delivery that succeeded
    pauses: int = 0  # pauses since the last success
    paused_until: float = -math.inf
    fastest: float = math.inf  # the fastest answer of this period...
    fastest_before: float = math.inf  # ...and of the one before
    period_started: float = -math.inf
    answered_quickly_at: float = -math.inf  # its last answer (any status) that was not slow

    @property
    def size(self) -> int:
        return max(1, int(self.limit))

    def shrink(self, sent_at: float, now: float) -> None:
        if sent_at < self.shrunk_at:
            return  # sent before the last decrease: part of the same bad moment
        self.limit = max(1.0, self.limit * DECREASE)
        # Below the first window it grows back as fast as a new receiver's would: a
        # receiver failing at random (not for load) then keeps a few at once.
        self.threshold = max(self.limit, float(INITIAL_WINDOW))
        self.shrunk_at = now

    def grow(self, cap: int) -> None:
        step = 1.0 if self.limit < self.threshold else 1.0 / self.limit
        self.limit = min(float(cap), self.limit + step)

    @property
    def patience(self) -> float:
        """How long an answer may take before it is slow (infinite before any answer)."""
        usual = min(self.fastest, self.fastest_before)
        return max(usual * SLOW_FACTOR, usual + SLOW_MARGIN)

    def is_slow(self, took: float, now: float) -> bool:
        """Whether an answer that took `took` seconds was slow for this receiver; it
        also counts towards the receiver's fastest answer."""
        if now - self.period_started >= FASTEST_PERIOD_SECONDS:
            self.fastest_before, self.fastest = self.fastest, math.inf
            self.period_started = now
        patience = self.patience
        self.fastest = min(self.fastest, took)
        return took > patience


class ReceiverWindows:
    """Each receiver's window, and which receivers are paused."""

    def __init__(
        self,
        backoff: Callable[[int], float],
        *,
        initial: int = INITIAL_WINDOW,
        group: GroupPauses | None = None,
    ) -> None:
        """`group`: the pauses a `--processes` group keeps together, in a group."""
        self._backoff = backoff
        self._initial = initial
        self._windows: dict[int, _Window] = {}
        self._group = group

    def _of(self, subscription_id: int, cap: int) -> _Window:
        window = self._windows.get(subscription_id)
        if window is None:
            window = _Window(limit=float(min(self._initial, cap)), threshold=float(cap))
            self._windows[subscription_id] = window
        return window

    def first(self, cap: int) -> int:
        """The window of a receiver not seen yet."""
        return min(self._initial, cap)

    def admit(self, subscription_id: int, now: float, cap: int) -> int:
        """Take on a receiver this process had no window for (a claim just handed it
        deliveries) and say how many it may start now: its first window, or, if another
        process of the group paused it, what the group allows (none before the pause
        ends, then the probe)."""
        self._of(subscription_id, cap)
        return self.allowance(subscription_id, now, cap)

    def allowance(self, subscription_id: int, now: float, cap: int) -> int:
        """How many deliveries the receiver may hold now: its window (within `cap`),
        none while paused, one (the probe) once a pause is over."""
        window = self._windows.get(subscription_id)
        if self._group is not None:
            shared = self._group.state(subscription_id)
            if shared is not None and shared.pauses:
                return self._group.probe(subscription_id, shared, cap)
            if shared is not None and window is not None and window.pauses:
                # Another process's probe succeeded: the receiver is back for all.
                window.pauses, window.paused_until = 0, -math.inf
        if window is None:
            return self.first(cap)
        if window.pauses:
            return 0 if now < window.paused_until else min(1, cap)
        return min(window.size, cap)

    def succeeded(
        self, subscription_id: int, *, sent_at: float, now: float, held: int, cap: int
    ) -> None:
        """A 2xx for a delivery sent at `sent_at`, while the receiver held `held`
        deliveries (this one included)."""
        window = self._of(subscription_id, cap)
        window.streak = 0
        window.latest_success_sent_at = max(window.latest_success_sent_at, sent_at)
        window.pauses = 0
        window.paused_until = -math.inf
        if self._group is not None:
            self._group.resume(subscription_id)
        if window.is_slow(now - sent_at, now):
            window.shrink(sent_at, now)
            return
        window.answered_quickly_at = now
        if held >= window.size:
            window.grow(cap)

    def failed(
        self,
        subscription_id: int,
        *,
        sent_at: float,
        now: float,
        cap: int,
        retry_after: float | None = None,
        backoff: Callable[[int], float] | None = None,
        answered: bool = False,
    ) -> None:
        """The receiver failed a delivery sent at `sent_at` for want of itself.
        `backoff` is the receiver's own, when its subscription sets one; `answered`:
        it failed with an HTTP status (a 5xx, a 429), not for want of an answer."""
        window = self._of(subscription_id, cap)
        if answered and not window.is_slow(now - sent_at, now):
            window.answered_quickly_at = now
        if sent_at > window.latest_success_sent_at:
            # A failure of a delivery sent before one that succeeded does not count
            # towards the streak: the receiver was up after it was sent. Hung
            # deliveries time out together, and counted as they end they would look
            # like a receiver that stopped answering.
            window.streak += 1
        window.shrink(sent_at, now)
        pause = 0.0
        if self._group is not None and self._group.holds_probe(subscription_id):
            # The group's probe failed: paused again, longer, whatever this process's
            # own streak (others may have seen the failures that paused it).
            window.pauses = max(window.pauses, self._group.pauses(subscription_id)) + 1
            pause = (backoff or self._backoff)(window.pauses)
        elif window.streak >= DEAD_AFTER and window.size == 1:
            window.pauses += 1
            pause = (backoff or self._backoff)(window.pauses)
        if retry_after is not None:
            window.pauses = max(window.pauses, 1)
            pause = max(pause, retry_after)
        if pause > 0 or window.pauses:
            window.paused_until = max(window.paused_until, now + pause)
            if self._group is not None:
                self._group.pause(subscription_id, window.paused_until, now, window.pauses)

    def probe_unused(self, subscription_id: int) -> None:
        """This process claimed the group's probe of a paused receiver but had nothing
        to send it: another process may probe."""
        if self._group is not None:
            self._group.release_probe(subscription_id)

    def patience(self, subscription_id: int) -> float:
        """How long a delivery to the receiver may be out before it is overdue."""
        window = self._windows.get(subscription_id)
        return math.inf if window is None else window.patience

    def overdue(self, subscription_id: int, *, sent_at: float, now: float) -> None:
        """A delivery sent at `sent_at` is still unanswered past the receiver's patience:
        the window shrinks as for a slow answer, without waiting for the timeout."""
        window = self._windows.get(subscription_id)
        if window is not None:
            window.shrink(sent_at, now)

    def responsive(self, subscription_id: int, now: float) -> bool:
        """Whether the receiver answered quickly (any HTTP status) within the last
        `RESPONSIVE_SECONDS`."""
        window = self._windows.get(subscription_id)
        return window is not None and now - window.answered_quickly_at <= RESPONSIVE_SECONDS

    def forget(self, subscription_id: int) -> None:
        self._windows.pop(subscription_id, None)
        if self._group is not None:
            self._group.forget(subscription_id)

    def receivers(self) -> list[int]:
        """The receivers with a window of their own."""
        return list(self._windows)

    def size(self, subscription_id: int) -> int | None:
        """The receiver's window now, if it has one."""
        window = self._windows.get(subscription_id)
        return None if window is None else window.size

    def failures(self, subscription_id: int) -> int:
        """Failures since the receiver's last success."""
        window = self._windows.get(subscription_id)
        return 0 if window is None else window.streak

    def paused(self, subscription_id: int) -> bool:
        """Whether the receiver is paused as a whole (or waiting for its probe's answer)."""
        window = self._windows.get(subscription_id)
        return (window is not None and window.pauses > 0) or self._group_until(
            subscription_id
        ) is not None

    def paused_until(self, subscription_id: int) -> float | None:
        """Until when the receiver is paused as a whole, if it is (a time already past
        while its probe is out): no delivery goes before then, then only the probe, and
        the others once a probe succeeds."""
        window = self._windows.get(subscription_id)
        own = window.paused_until if window is not None and window.pauses else None
        group = self._group_until(subscription_id)
        return own if group is None else group if own is None else max(own, group)

    def _group_until(self, subscription_id: int) -> float | None:
        return None if self._group is None else self._group.until(subscription_id)

    def next_resume_at(self, now: float) -> float | None:
        """When the earliest paused receiver may be probed, if any is paused."""
        upcoming = [
            w.paused_until for w in self._windows.values() if w.pauses and w.paused_until > now
        ]
        if self._group is not None:
            upcoming.extend(filter(None, [self._group.next_look_at(now)]))
        return min(upcoming, default=None)
