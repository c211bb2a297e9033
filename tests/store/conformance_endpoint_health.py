"""Conformance: endpoint health (when every attempt to a push subscription has failed
since, disabling and resuming it) and the broker's events on `mq.events`."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from mqpy.model.domain import ClaimedDelivery, SubscriptionKind, SubscriptionSpec
from mqpy.model.events import EVENTS_TOPIC
from mqpy.store.base import Store
from tests.store.support import (
    LEASE,
    T0,
    Reopen,
    ack_all,
    all_dead_letters,
    claim,
    publish,
    subscribe,
)


async def claimed_for(store: Store, subscription_id: int, now: float) -> list[ClaimedDelivery]:
    return [d for d in (await claim(store, now)).deliveries if d.subscription_id == subscription_id]


async def failing_since(store: Store, subscription_id: int) -> float | None:
    found = await store.subscription(subscription_id)
    assert found is not None
    return found.failing_since


def events_in(deliveries: list[ClaimedDelivery]) -> list[dict[str, Any]]:
    """The events among these deliveries, in claim order."""
    return [json.loads(d.body) for d in deliveries if d.topic == EVENTS_TOPIC]


async def fail(store: Store, delivery: ClaimedDelivery, at: float) -> None:
    await store.retry(delivery, due_at=at + 1, error="cannot connect", status=None, attempted_at=at)


class EndpointHealthConformance:
    async def test_failing_since_is_the_first_failure_after_the_last_success(
        self, store: Store
    ) -> None:
        hook = await subscribe(store)
        for n in range(4):
            await publish(store, f"m{n}")
        m0, m1, m2, m3 = await claimed_for(store, hook.id, T0)
        assert await failing_since(store, hook.id) is None
        await fail(store, m0, T0 + 1)
        assert await failing_since(store, hook.id) == T0 + 1
        await fail(store, m1, T0 + 2)  # a later failure leaves the run's start alone
        assert await failing_since(store, hook.id) == T0 + 1
        assert [s.id for s in await store.failing_subscriptions()] == [hook.id]
        await store.ack(m2, now=T0 + 3, status=200, attempted_at=T0 + 3)
        assert await failing_since(store, hook.id) is None
        assert await store.failing_subscriptions() == []
        await fail(store, m3, T0 + 4)
        assert await failing_since(store, hook.id) == T0 + 4

    async def test_a_batch_is_judged_by_the_order_its_attempts_were_sent(
        self, store: Store
    ) -> None:
        hook = await subscribe(store)
        for n in range(3):
            await publish(store, f"m{n}")
        early, success, late = await claimed_for(store, hook.id, T0)
        # Settled together, out of order: the success at T0 + 2 ends the failure
        # before it, and the run starts at the failure after it.
        await asyncio.gather(
            fail(store, late, T0 + 3),
            store.ack(success, now=T0 + 2, status=200, attempted_at=T0 + 2),
            fail(store, early, T0 + 1),
        )
        assert await failing_since(store, hook.id) == T0 + 3

    async def test_a_success_sent_before_a_stored_failure_does_not_end_its_run(
        self, store: Store
    ) -> None:
        # Two nodes: one records a failure sent at T0 + 5, the other then a success
        # sent at T0 + 4 (its answer came late). The receiver failed last.
        hook = await subscribe(store)
        await publish(store, "a")
        await publish(store, "b")
        a, b = await claimed_for(store, hook.id, T0)
        await fail(store, a, T0 + 5)
        await store.ack(b, now=T0 + 6, status=200, attempted_at=T0 + 4)
        assert await failing_since(store, hook.id) == T0 + 5

    async def test_pull_subscriptions_and_events_deliveries_never_count_as_failing(
        self, store: Store
    ) -> None:
        pull = await store.add_subscription(
            SubscriptionSpec(url="", topic="p", kind=SubscriptionKind.PULL),
            T0,
            key_id=None,
            secret=None,
        )
        watcher = await subscribe(store, EVENTS_TOPIC)
        await publish(store, "pulled", topic="p")
        (pulled,) = (
            await store.claim(
                limit=10,
                now=T0,
                lease_seconds=LEASE,
                per_subscription_limit=10,
                busy={},
                for_subscription=pull.id,
            )
        ).deliveries
        await fail(store, pulled, T0 + 1)
        assert await failing_since(store, pull.id) is None
        # An event for the watcher, whose failure to take it is not counted either.
        hook = await subscribe(store, "h")
        await publish(store, "poison", topic="h")
        (poison,) = await claimed_for(store, hook.id, T0 + 2)
        await store.dead_letter(poison, now=T0 + 2, error="HTTP 500", status=500)
        (event,) = await claimed_for(store, watcher.id, T0 + 3)
        await fail(store, event, T0 + 3)
        assert await failing_since(store, watcher.id) is None

    async def test_a_disabled_subscription_keeps_its_deliveries_until_resumed(
        self, store: Store, reopen: Reopen
    ) -> None:
        hook = await subscribe(store, "orders")
        other = await subscribe(store, "orders")
        watcher = await subscribe(store, EVENTS_TOPIC)
        await publish(store, "first", topic="orders")
        first = [d for d in (await claim(store, T0)).deliveries if d.subscription_id == hook.id]
        await fail(store, first[0], T0 + 1)
        (failing,) = await store.failing_subscriptions()
        assert failing.id == hook.id
        reason = "every attempt failed for 72 h; last error: cannot connect"
        disabled = await store.disable_subscription(
            hook.id, failing_since=T0 + 1, now=T0 + 10, reason=reason
        )
        assert disabled is not None and disabled.disabled is not None
        assert (disabled.disabled.at, disabled.disabled.reason) == (T0 + 10, reason)
        # Once only, whoever else decides it too.
        assert (
            await store.disable_subscription(hook.id, failing_since=T0 + 1, now=T0 + 11, reason="x")
            is None
        )
        assert await store.failing_subscriptions() == []
        await publish(store, "second", topic="orders", at=T0 + 20)
        store = await reopen(store)
        kept = await store.subscription(hook.id)
        assert kept is not None and kept.disabled == disabled.disabled
        # Nothing is claimed for it, and nothing of it expires however old it gets.
        later = T0 + 100_000
        claimed = (await claim(store, later)).deliveries
        assert {d.subscription_id for d in claimed} == {other.id, watcher.id}
        (event,) = events_in(claimed)
        assert event["type"] == "subscription.disabled"
        assert (event["subscription_id"], event["topic"], event["reason"]) == (
            hook.id,
            "orders",
            reason,
        )
        assert await store.expire(now=later, max_age=60) == 0
        assert await all_dead_letters(store) == []
        await ack_all(store, claimed, later)
        resumed = await store.resume(hook.id, later + 1)
        assert resumed is not None and resumed.disabled is None
        assert resumed.failing_since is None and not resumed.paused
        claimed = (await claim(store, later + LEASE + 2)).deliveries
        assert sorted(d.body for d in claimed if d.subscription_id == hook.id) == [
            "first",
            "second",
        ]
        (event,) = events_in(claimed)
        assert (event["type"], event["subscription_id"]) == ("subscription.resumed", hook.id)

    async def test_a_disable_for_a_run_a_success_ended_does_nothing(self, store: Store) -> None:
        hook = await subscribe(store)
        await publish(store, "a")
        await publish(store, "b")
        a, b = await claimed_for(store, hook.id, T0)
        await fail(store, a, T0 + 1)
        await store.ack(b, now=T0 + 2, status=200, attempted_at=T0 + 2)
        assert (
            await store.disable_subscription(hook.id, failing_since=T0 + 1, now=T0 + 3, reason="x")
            is None
        )
        kept = await store.subscription(hook.id)
        assert kept is not None and kept.disabled is None

    async def test_resuming_a_subscription_that_was_only_paused_publishes_nothing(
        self, store: Store
    ) -> None:
        hook = await subscribe(store, paused=True)
        watcher = await subscribe(store, EVENTS_TOPIC)
        resumed = await store.resume(hook.id, T0)
        assert resumed is not None and not resumed.paused
        assert await claimed_for(store, watcher.id, T0) == []
        assert await store.resume(12345, T0) is None

    async def test_a_dead_letter_is_published_once_as_an_event(self, store: Store) -> None:
        hook = await subscribe(store, "orders", group="billing")
        watcher = await subscribe(store, EVENTS_TOPIC)
        await publish(store, "poison", topic="orders")
        (delivery,) = await claimed_for(store, hook.id, T0)
        for _ in range(2):  # settled twice: the second finds its lease gone
            await store.dead_letter(delivery, now=T0 + 1, error="HTTP 500", status=500)
        (event,) = events_in(await claimed_for(store, watcher.id, T0 + 2))
        assert event == {
            "type": "delivery.dead_lettered",
            "time": "2023-11-14T22:13:21.000Z",
            "subscription_id": hook.id,
            "group": "billing",
            "message_id": delivery.message_id,
            "topic": "orders",
            "attempts": 1,
            "last_error": "HTTP 500",
            "last_status": 500,
        }

    async def test_a_delivery_that_expired_unattempted_is_published_as_a_dead_letter(
        self, store: Store
    ) -> None:
        hook = await subscribe(store, "orders", paused=True)
        watcher = await subscribe(store, EVENTS_TOPIC)
        stale = await publish(store, "stale", topic="orders")
        assert await store.expire(now=T0 + 100, max_age=60) == 1
        (event,) = events_in(await claimed_for(store, watcher.id, T0 + 101))
        assert (event["type"], event["subscription_id"], event["message_id"]) == (
            "delivery.dead_lettered",
            hook.id,
            stale.id,
        )
        assert (event["topic"], event["attempts"], event["last_status"]) == ("orders", 0, None)
        assert event["last_error"] == "not delivered within its max-age of 1m"

    async def test_a_dead_letter_of_an_event_makes_no_event(self, store: Store) -> None:
        hook = await subscribe(store)
        first = await subscribe(store, EVENTS_TOPIC)
        second = await subscribe(store, EVENTS_TOPIC)
        await publish(store, "poison")
        (delivery,) = await claimed_for(store, hook.id, T0)
        await store.dead_letter(delivery, now=T0 + 1, error="HTTP 500", status=500)
        claimed = (await claim(store, T0 + 2)).deliveries
        assert {d.subscription_id for d in claimed} == {first.id, second.id}
        await asyncio.gather(
            *(store.dead_letter(d, now=T0 + 3, error="HTTP 500", status=500) for d in claimed)
        )
        assert (await claim(store, T0 + LEASE + 10)).deliveries == []
        assert len(await all_dead_letters(store)) == 3

    async def test_an_event_nobody_subscribes_to_is_not_kept(self, store: Store) -> None:
        hook = await subscribe(store)
        await publish(store, "poison")
        (delivery,) = await claimed_for(store, hook.id, T0)
        before = await store.stats()
        await store.dead_letter(delivery, now=T0 + 1, error="HTTP 500", status=500)
        assert (await store.stats()).queue_length == before.queue_length - 1
        assert await store.topic(EVENTS_TOPIC) is None
        # Nor waiting for a first subscriber of the events.
        await subscribe(store, EVENTS_TOPIC, now=T0 + 2)
        assert (await claim(store, T0 + 2)).deliveries == []

    async def test_disabling_and_resuming_move_the_catalog_version(self, store: Store) -> None:
        hook = await subscribe(store)
        await publish(store, "a")
        (a,) = await claimed_for(store, hook.id, T0)
        await fail(store, a, T0 + 1)
        before = await store.catalog_version()
        await store.disable_subscription(hook.id, failing_since=T0 + 1, now=T0 + 2, reason="x")
        disabled = await store.catalog_version()
        assert disabled != before
        await store.resume(hook.id, T0 + 3)
        assert await store.catalog_version() != disabled
