"""Conformance: each delivery's attempt history (a message's journey)."""

from __future__ import annotations

from mqpy.model.domain import Attempt, AttemptOutcome, DeliveryStatus
from mqpy.store.base import Store
from mqpy.store.history import MAX_ATTEMPTS_KEPT
from tests.store.support import T0, claim, claim_one, publish, subscribe


async def journey(store: Store, message_id: str, now: float) -> list[DeliveryStatus]:
    kept = await store.message(message_id, now)
    assert kept is not None
    return kept.deliveries


class HistoryConformance:
    async def test_each_attempt_is_kept_with_its_time_outcome_and_duration(
        self, store: Store
    ) -> None:
        sub = await subscribe(store)
        sent = await publish(store, "m")
        first = await claim_one(store, T0)
        await store.retry(
            first,
            due_at=T0 + 10,
            error="receiver answered HTTP 503",
            status=503,
            attempted_at=T0 + 1,
            duration=0.25,
        )
        second = await claim_one(store, T0 + 10)
        await store.retry(
            second, due_at=T0 + 30, error="connection refused", status=None, attempted_at=T0 + 11
        )
        third = await claim_one(store, T0 + 30)
        await store.ack(third, now=T0 + 31, status=204, attempted_at=T0 + 30.5, duration=0.5)
        (delivery,) = await journey(store, sent.id, T0 + 32)
        assert delivery.history == (
            Attempt(
                1, sub.id, T0 + 1, 0.25, AttemptOutcome.RETRY, 503, "receiver answered HTTP 503"
            ),
            Attempt(2, sub.id, T0 + 11, None, AttemptOutcome.RETRY, None, "connection refused"),
            Attempt(3, sub.id, T0 + 30.5, 0.5, AttemptOutcome.DELIVERED, 204, None),
        )

    async def test_a_dead_letter_and_its_redrive_keep_the_history(self, store: Store) -> None:
        await subscribe(store)
        sent = await publish(store, "m")
        failed = await claim_one(store, T0)
        await store.dead_letter(
            failed, now=T0 + 1, error="receiver answered HTTP 410", status=410, attempted_at=T0
        )
        assert await store.redrive(T0 + 2) == 1
        again = await claim_one(store, T0 + 2)
        await store.ack(again, now=T0 + 3, status=200, attempted_at=T0 + 2)
        (delivery,) = await journey(store, sent.id, T0 + 4)
        assert [(a.attempt, a.outcome, a.status, a.at) for a in delivery.history] == [
            (1, AttemptOutcome.DEAD, 410, T0),
            (1, AttemptOutcome.DELIVERED, 200, T0 + 2),
        ]

    async def test_each_delivery_has_its_own_history(self, store: Store) -> None:
        one = await subscribe(store)
        two = await subscribe(store)
        sent = await publish(store, "m")
        for delivery in (await claim(store, T0)).deliveries:
            if delivery.subscription_id == one.id:
                await store.ack(delivery, now=T0 + 1, status=200, attempted_at=T0)
            else:
                await store.retry(
                    delivery, due_at=T0 + 5, error="boom", status=500, attempted_at=T0
                )
        by_receiver = {d.subscription_id: d.history for d in await journey(store, sent.id, T0 + 1)}
        assert [a.outcome for a in by_receiver[one.id]] == [AttemptOutcome.DELIVERED]
        assert [a.outcome for a in by_receiver[two.id]] == [AttemptOutcome.RETRY]

    async def test_a_settlement_whose_lease_was_lost_adds_no_attempt(self, store: Store) -> None:
        await subscribe(store)
        sent = await publish(store, "m")
        stale = await claim_one(store, T0)
        # The lease expires and another claim takes the delivery over.
        current = await claim_one(store, T0 + 1000)
        await store.ack(stale, now=T0 + 1001, status=200, attempted_at=T0)
        await store.ack(current, now=T0 + 1002, status=200, attempted_at=T0 + 1000)
        (delivery,) = await journey(store, sent.id, T0 + 1003)
        assert [(a.attempt, a.at) for a in delivery.history] == [(2, T0 + 1000)]

    async def test_history_keeps_only_the_newest_attempts(self, store: Store) -> None:
        await subscribe(store)
        sent = await publish(store, "m")
        now = T0
        total = MAX_ATTEMPTS_KEPT + 5
        for _ in range(total):
            delivery = await claim_one(store, now)
            await store.retry(delivery, due_at=now + 1, error="boom", status=500, attempted_at=now)
            now += 1
        (kept,) = await journey(store, sent.id, now)
        assert [a.attempt for a in kept.history] == list(range(6, total + 1))
        last = await claim_one(store, now)
        await store.ack(last, now=now, status=200, attempted_at=now)
        (kept,) = await journey(store, sent.id, now)
        # The success that ends the journey is kept on top of the newest failures.
        assert len(kept.history) == MAX_ATTEMPTS_KEPT + 1
        assert kept.history[-1].outcome is AttemptOutcome.DELIVERED

    async def test_history_goes_with_its_message_when_swept(self, store: Store) -> None:
        await subscribe(store)
        sent = await publish(store, "m")
        await store.ack(await claim_one(store, T0), now=T0 + 1, status=200)
        assert await store.sweep(delivered_before=T0 + 2, dedup_before=0.0) == 1
        assert await store.message(sent.id, T0 + 3) is None
        # A message published after the sweep starts its history empty.
        later = await publish(store, "n", at=T0 + 3)
        (delivery,) = await journey(store, later.id, T0 + 3)
        assert delivery.history == ()
