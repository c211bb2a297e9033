"""Disabling dead endpoints: a push subscription whose every attempt failed for its
disable-after (its own `disable_after_seconds`, else `--disable-after`) is disabled
rather than retried for ever. Its messages wait, and a resume turns it back on.

The store keeps when each subscription's run of failures began (store/endpoint_health.py,
written with the settlements). Every node looks every few seconds; the store disables a
subscription only if that run is still the one judged, so of nodes looking at once one
does it, and its `subscription.disabled` event is published once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from mqpy.config import format_duration
from mqpy.core.broker import Broker
from mqpy.model.domain import Subscription
from mqpy.model.errors import StoreError
from mqpy.model.rfc3339 import rfc3339
from mqpy.observability import Observer
from mqpy.store import Store

log = logging.getLogger("mqpy.delivery")

# How often to look: a tenth of --disable-after, within these bounds, and sooner when a
# failing subscription's own disable-after runs out before then. A subscription that
# starts failing is seen at the next look, so one with a short disable-after of its own
# may be disabled up to this much late.
MIN_CHECK_SECONDS = 0.5
MAX_CHECK_SECONDS = 30.0


def check_interval(disable_after: float) -> float:
    return max(MIN_CHECK_SECONDS, min(MAX_CHECK_SECONDS, disable_after / 10))


def disable_reason(after: float, since: float, last_error: str | None) -> str:
    """Why it was disabled, in the words the API, the dashboard and the event show."""
    said = f"every attempt failed for {format_duration(after)} (since {rfc3339(since)})"
    return f"{said}; last error: {last_error}" if last_error else said


class EndpointHealth:
    """Disables the push subscriptions that failed for too long."""

    def __init__(
        self,
        store: Store,
        broker: Broker,
        observer: Observer,
        *,
        disable_after: float,
        clock: Callable[[], float],
    ) -> None:
        self._store = store
        self._broker = broker
        self._observer = observer
        self._disable_after = disable_after
        self._clock = clock

    async def run(self) -> None:
        """Look every `check_interval` until cancelled; a failure is logged and tried
        again next time."""
        interval = check_interval(self._disable_after)
        wait = interval
        while True:
            await asyncio.sleep(wait)
            wait = interval
            try:
                _, next_at = await self.check()
            except StoreError as exc:
                log.error("cannot check for subscriptions failing too long: %s", exc)
                continue
            if next_at is not None:
                wait = max(MIN_CHECK_SECONDS, min(interval, next_at - self._clock()))

    async def check(self) -> tuple[list[Subscription], float | None]:
        """Disable every subscription past its disable-after; returns those it did, and
        when the next of those still failing will be past its own."""
        now = self._clock()
        due = []
        next_at: float | None = None
        for s in await self._store.failing_subscriptions():
            assert s.failing_since is not None
            ends = s.failing_since + self._after(s)
            if ends <= now:
                due.append(s)
            elif next_at is None or ends < next_at:
                next_at = ends
        if not due:
            return [], next_at
        saved: dict[int, str | None] | None = None
        disabled = []
        for subscription in due:
            error = self._observer.last_error(subscription.id)
            if error is None:  # another node made the attempts: what it saved of them
                if saved is None:
                    saved = {
                        h.subscription_id: h.last_error for h in await self._store.receiver_health()
                    }
                error = saved.get(subscription.id)
            assert subscription.failing_since is not None
            reason = disable_reason(self._after(subscription), subscription.failing_since, error)
            done = await self._broker.disable(subscription, reason=reason, now=now)
            if done is not None:
                log.warning(
                    "disabled subscription %d: %s; its messages wait until it is resumed "
                    "(POST /v1/subscriptions/%d/resume)",
                    subscription.id,
                    reason,
                    subscription.id,
                    extra={"receiver_id": subscription.id, "outcome": "disabled"},
                )
                disabled.append(done)
        return disabled, next_at

    def _after(self, subscription: Subscription) -> float:
        own = subscription.spec.disable_after_seconds
        return self._disable_after if own is None else own
