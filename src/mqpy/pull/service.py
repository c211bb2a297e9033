"""Pulling: a consumer's long poll claims its subscription's due deliveries under a
lease of its ack deadline, and its acks, nacks and extensions settle them through the
same store calls as the dispatcher's outcomes.

A delivery not acked within its deadline is due again once the lease runs out, and the
next pull takes it with the next attempt number; one whose attempts are spent goes to
the dead letters instead of out again, as a push delivery that failed its last attempt
does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mqpy.auth.access import Principal
from mqpy.core.broker import Broker
from mqpy.delivery.retry import RedeliveryPolicy
from mqpy.model.domain import ClaimedDelivery, Subscription
from mqpy.pull.ack_ids import AckId
from mqpy.pull.wakeup import Wakeup
from mqpy.store import Store

log = logging.getLogger("mqpy.pull")

# The longest a long poll waits without looking again: it catches leases that ran out
# and deliveries made due by anything that did not notify (as the dispatcher's idle).
MAX_IDLE_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Pulled:
    """A message handed to a consumer, and the ack id that settles it."""

    ack_id: AckId
    delivery: ClaimedDelivery


@dataclass(frozen=True, slots=True)
class Settled:
    """Which ack ids an ack, nack or extend applied to, and which had expired (their
    lease ran out, or the message was settled or pulled again since)."""

    done: list[AckId]
    expired: list[AckId]


class PullService:
    """Pull, ack, nack and extend on pull subscriptions."""

    def __init__(
        self,
        store: Store,
        broker: Broker,
        policy: RedeliveryPolicy,
        *,
        clock: Callable[[], float] = time.time,
        on_acked: Callable[[ClaimedDelivery, float], None] | None = None,
    ) -> None:
        self._store = store
        self._broker = broker
        self._policy = policy
        self._clock = clock
        self._on_acked = on_acked
        self._wakeup = Wakeup()
        self._stopping = False

    @property
    def stopping(self) -> bool:
        return self._stopping

    def notify(self) -> None:
        """Deliveries may be due now (a publish here or on another node, a nack)."""
        self._wakeup.notify()

    def forget_subscription(self, subscription_id: int) -> None:
        """A subscription ended: its waiting polls and streams find out at once."""
        self._wakeup.notify()

    def subscription_changed(self, subscription: Subscription) -> None:
        """Resumed, say: its waiting polls look again."""
        self._wakeup.notify()

    def stop(self) -> None:
        """Shutting down: waiting polls answer with what they have (nothing)."""
        self._stopping = True
        self._wakeup.notify()

    async def pull(
        self,
        subscription_id: int,
        principal: Principal,
        *,
        max_messages: int,
        wait_seconds: float,
    ) -> list[Pulled]:
        """Up to `max_messages` messages, as soon as there is at least one, or none
        after `wait_seconds`."""
        subscription = await self._broker.pullable(subscription_id, principal)
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + wait_seconds
        while True:
            signal = self._wakeup.signal()
            pulled, next_due_at = await self._take(subscription, max_messages)
            left = give_up_at - loop.time()
            if pulled or left <= 0 or self._stopping:
                return pulled
            timeout = min(left, MAX_IDLE_SECONDS)
            if next_due_at is not None:
                timeout = min(timeout, max(0.0, next_due_at - self._clock()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await signal.wait()

    async def _take(
        self, subscription: Subscription, limit: int
    ) -> tuple[list[Pulled], float | None]:
        now = self._clock()
        claim = await self._store.claim(
            limit=limit,
            now=now,
            lease_seconds=subscription.spec.ack_deadline_seconds,
            per_subscription_limit=limit,
            busy={},
            for_subscription=subscription.id,
        )
        spent = await asyncio.gather(*(self._spent(d, now) for d in claim.deliveries))
        pulled = [
            Pulled(AckId(delivery.delivery_id, delivery.lease), delivery)
            for delivery, dead in zip(claim.deliveries, spent, strict=True)
            if not dead
        ]
        return pulled, claim.next_due_at

    async def _spent(self, delivery: ClaimedDelivery, now: float) -> bool:
        """Dead-letter a delivery pulled again after its last attempt ran out unacked
        (or past its max age): it is not handed out again."""
        if delivery.attempt == 1:
            return False
        policy = self._policy.overridden_by(delivery.retry)
        age = now - max(delivery.published_at, delivery.deliver_at or 0.0)
        if delivery.attempt <= policy.max_attempts and age <= policy.max_age:
            return False
        error = f"not acknowledged within the ack deadline in {delivery.attempt - 1} attempts"
        log.warning(
            "dead-lettered %s for pull subscription %d: %s",
            delivery.message_id,
            delivery.subscription_id,
            error,
            extra={"receiver_id": delivery.subscription_id, "outcome": "dead_lettered"},
        )
        await self._store.dead_letter(delivery, now=now, error=error, status=None)
        return True

    async def give_back(self, pulled: Sequence[Pulled]) -> None:
        """Messages pulled for a consumer that went away before they reached it: due
        again at once, their attempt undone, rather than after the ack deadline."""
        if pulled:
            await self._store.release([p.delivery for p in pulled], self._clock())
            self.notify()

    async def ack(
        self, subscription_id: int, principal: Principal, ack_ids: Sequence[AckId]
    ) -> Settled:
        """The consumer took these: they are done."""
        held, settled = await self._held(subscription_id, principal, ack_ids)
        now = self._clock()
        # Together, so the store records them in one batch rather than one by one.
        await asyncio.gather(*(self._store.ack(delivery, now=now) for delivery in held))
        if self._on_acked is not None:
            for delivery in held:
                self._on_acked(delivery, now)
        return settled

    async def nack(
        self,
        subscription_id: int,
        principal: Principal,
        ack_ids: Sequence[AckId],
        delay_seconds: float | None,
    ) -> Settled:
        """The consumer could not take these: due again after `delay_seconds` (else
        after the retry policy's backoff), or dead letters once attempts are spent."""
        held, settled = await self._held(subscription_id, principal, ack_ids)
        now = self._clock()
        await asyncio.gather(*(self._nack_one(d, now, delay_seconds) for d in held))
        if held:
            self.notify()  # a nack with no delay makes them due for the next poll now
        return settled

    async def _nack_one(self, delivery: ClaimedDelivery, now: float, delay: float | None) -> None:
        policy = self._policy.overridden_by(delivery.retry)
        due_at = policy.next_attempt_at(
            attempt=delivery.attempt,
            published_at=max(delivery.published_at, delivery.deliver_at or 0.0),
            now=now,
            retry_after=delay,
        )
        error = "nacked by the consumer"
        if due_at is None:
            await self._store.dead_letter(delivery, now=now, error=error, status=None)
        else:
            await self._store.retry(delivery, due_at=due_at, error=error, status=None)

    async def extend(
        self, subscription_id: int, principal: Principal, ack_ids: Sequence[AckId], seconds: float
    ) -> Settled:
        """The consumer needs longer: these stay leased to it for `seconds` from now."""
        held, settled = await self._held(subscription_id, principal, ack_ids)
        lost = set(await self._store.renew(held, now=self._clock(), lease_seconds=seconds))
        if not lost:
            return settled
        extended = {d.delivery_id for d in held} - lost
        return Settled(
            [a for a in settled.done if a.delivery_id in extended],
            [a for a in ack_ids if a.delivery_id not in extended],
        )

    async def _held(
        self, subscription_id: int, principal: Principal, ack_ids: Sequence[AckId]
    ) -> tuple[list[ClaimedDelivery], Settled]:
        """Of these ack ids, the deliveries the subscription still holds under them."""
        subscription = await self._broker.pullable(subscription_id, principal)
        held = await self._store.leased(
            subscription.id, {(a.delivery_id, a.lease) for a in ack_ids}, now=self._clock()
        )
        live = {(d.delivery_id, d.lease) for d in held}
        done = [a for a in ack_ids if (a.delivery_id, a.lease) in live]
        expired = [a for a in ack_ids if (a.delivery_id, a.lease) not in live]
        return held, Settled(done, expired)
