"""Conformance: what operators inspect: dead letters, kept messages, topics, sweeping."""

from __future__ import annotations

from dataclasses import replace

import pytest

from mqpy.model.domain import DeliveryState, DeliveryStatus, TopicInfo
from mqpy.model.errors import BadCursor
from mqpy.store.base import Store
from tests.store.support import (
    T0,
    all_dead_letters,
    all_topics,
    claim,
    claim_one,
    dead_letter_everything,
    message,
    publish,
    publish_count,
    receiver,
    subscribe,
)


def status(
    state: DeliveryState,
    subscription_id: int | None,
    *,
    group: str | None = None,
    attempts: int = 0,
    last_status: int | None = None,
    last_error: str | None = None,
    next_attempt_at: float | None = None,
    delivered_at: float | None = None,
) -> DeliveryStatus:
    return DeliveryStatus(
        subscription_id=subscription_id,
        group=group,
        state=state,
        attempts=attempts,
        last_status=last_status,
        last_error=last_error,
        next_attempt_at=next_attempt_at,
        delivered_at=delivered_at,
    )


async def deliveries_of(store: Store, message_id: str, now: float) -> list[DeliveryStatus]:
    """Where each delivery stands, without its attempt history (conformance_history)."""
    kept = await store.message(message_id, now)
    assert kept is not None
    return [replace(delivery, history=()) for delivery in kept.deliveries]


async def states(store: Store, message_id: str, now: float) -> list[DeliveryState]:
    return [d.state for d in await deliveries_of(store, message_id, now)]


class InspectionConformance:
    # Dead letters.

    async def test_one_dead_letter_is_redriven_or_dropped_alone(self, store: Store) -> None:
        one = await subscribe(store)
        two = await subscribe(store)
        first = await publish(store, "first")
        second = await publish(store, "second")
        await dead_letter_everything(store, T0)
        assert len(await all_dead_letters(store)) == 4
        # Nothing matches: a message that is not a dead letter there, or no message.
        assert await store.redrive(T0 + 1, one.id, message_id="msg_never_published") == 0
        assert await store.purge_dead_letters(two.id, now=T0 + 1, message_id="msg_nope") == 0
        assert await store.redrive(T0 + 1, one.id, message_id=first.id) == 1
        redriven = await claim_one(store, T0 + 1)
        assert (redriven.subscription_id, redriven.message_id, redriven.attempt) == (
            one.id,
            first.id,
            1,
        )
        assert await store.purge_dead_letters(two.id, now=T0 + 2, message_id=second.id) == 1
        left = {(d.receiver_id, d.message_id) for d in await all_dead_letters(store)}
        assert left == {(one.id, second.id), (two.id, first.id)}
        # Redriven or dropped, it is no dead letter any more.
        assert await store.redrive(T0 + 3, one.id, message_id=first.id) == 0
        assert await store.purge_dead_letters(two.id, now=T0 + 3, message_id=second.id) == 0

    async def test_dropping_a_messages_last_dead_letter_finishes_it(self, store: Store) -> None:
        sub = await subscribe(store)
        kept = await publish(store, "kept")
        dropped = await publish(store, "dropped")
        await dead_letter_everything(store, T0)
        assert await store.purge_dead_letters(sub.id, now=T0 + 1, message_id=dropped.id) == 1
        assert await store.dead_letter_count() == 1
        # Done as of the drop: swept with the retention, unlike the one still dead.
        assert await store.sweep(delivered_before=T0 + 2, dedup_before=0.0) == 1
        assert await store.message(dropped.id, T0 + 2) is None
        assert await store.message(kept.id, T0 + 2) is not None

    async def test_dead_letters_page_across_pages_oldest_first(self, store: Store) -> None:
        await subscribe(store)
        await subscribe(store)
        for n in range(5):
            await publish(store, f"m{n}")
        # Ten dead letters, several with the same dead_at: the cursor must not skip any.
        for index, delivery in enumerate((await claim(store, T0)).deliveries):
            await store.dead_letter(delivery, now=T0 + index // 3, error="HTTP 500", status=500)
        everything = await all_dead_letters(store)
        assert len(everything) == 10
        assert [d.dead_at for d in everything] == sorted(d.dead_at for d in everything)
        for size in (1, 3, 4, 10):
            assert await all_dead_letters(store, page_size=size) == everything, size
        assert (await store.dead_letters(limit=10)).next_cursor is None

    async def test_dead_letters_of_one_subscription(self, store: Store) -> None:
        chosen = await subscribe(store)
        other = await subscribe(store)
        for n in range(3):
            await publish(store, f"m{n}", topic="default", attributes={"n": str(n)})
        await dead_letter_everything(store, T0)
        mine = await all_dead_letters(store, subscription_id=chosen.id, page_size=2)
        assert [(d.body, d.receiver_id) for d in mine] == [
            ("m0", chosen.id),
            ("m1", chosen.id),
            ("m2", chosen.id),
        ]
        assert [d.attributes for d in mine] == [{"n": "0"}, {"n": "1"}, {"n": "2"}]
        assert {(d.topic, d.last_status) for d in mine} == {("default", 500)}
        assert len(await all_dead_letters(store, subscription_id=other.id)) == 3
        assert await all_dead_letters(store, subscription_id=12345) == []

    async def test_purge_drops_all_dead_letters_or_one_subscriptions(self, store: Store) -> None:
        chosen = await subscribe(store)
        other = await subscribe(store)
        await publish(store, "m0")
        await publish(store, "m1")
        await dead_letter_everything(store, T0)
        assert await store.purge_dead_letters(subscription_id=chosen.id, now=T0) == 2
        assert {d.receiver_id for d in await all_dead_letters(store)} == {other.id}
        assert await store.dead_letter_count() == 2
        assert await store.redrive(T0 + 1, receiver_id=chosen.id) == 0
        assert await store.purge_dead_letters(now=T0) == 2
        assert await store.purge_dead_letters(now=T0) == 0
        assert await store.dead_letter_count() == 0
        assert (await claim(store, T0 + 1)).deliveries == []
        # Purged, nothing is left to deliver: the messages are done.
        assert (await store.stats()).queue_length == 0
        assert await store.topic_backlogs() == []

    async def test_purge_leaves_a_message_with_other_deliveries_in_the_backlog(
        self, store: Store
    ) -> None:
        failing = await subscribe(store)
        await subscribe(store)
        await publish(store, "m0")
        claimed = (await claim(store, T0)).deliveries
        (dead,) = [d for d in claimed if d.subscription_id == failing.id]
        await store.dead_letter(dead, now=T0, error="HTTP 500", status=500)
        assert await store.purge_dead_letters(now=T0) == 1
        assert (await store.topic("default")) == TopicInfo("default", 1, 1, T0, 2)

    async def test_redrive_of_a_group_dead_letter(self, store: Store) -> None:
        first = await subscribe(store, group="g")
        second = await subscribe(store, group="g")
        await publish(store, "poison")
        dead = await claim_one(store, T0)
        await store.dead_letter(dead, now=T0 + 1, error="HTTP 500", status=500)
        (letter,) = await all_dead_letters(store)
        assert letter.receiver_id == dead.subscription_id
        assert await store.redrive(T0 + 2, receiver_id=dead.subscription_id) == 1
        again = await claim_one(store, T0 + 2)
        assert (again.message_id, again.attempt) == (dead.message_id, 1)
        assert again.subscription_id in {first.id, second.id}
        # A member that leaves keeps the group's dead letters for the others.
        await store.dead_letter(again, now=T0 + 3, error="HTTP 500", status=500)
        await store.remove_subscription(again.subscription_id, T0 + 4)
        assert len(await all_dead_letters(store)) == 1
        assert await store.redrive(T0 + 5) == 1
        (remaining,) = {first.id, second.id} - {again.subscription_id}
        last = await claim_one(store, T0 + 5)
        assert (last.message_id, last.subscription_id) == (dead.message_id, remaining)

    # Kept messages.

    async def test_message_describes_the_message(self, store: Store) -> None:
        sent = message(
            "hello",
            "orders.eu",
            at=T0,
            attributes={"region": "eu"},
            ordering_key="cust-1",
            deliver_at=T0 + 60,
        )
        assert await publish_count(store, sent) == 0
        kept = await store.message(sent.id, T0)
        assert kept is not None
        assert (kept.id, kept.topic, kept.body) == (sent.id, "orders.eu", "hello")
        assert dict(kept.attributes) == {"region": "eu"}
        assert (kept.ordering_key, kept.published_at, kept.deliver_at) == ("cust-1", T0, T0 + 60)
        # Nobody subscribed yet: no deliveries.
        assert kept.deliveries == []
        assert await store.message("msg_never_published", T0) is None

    async def test_message_states_of_an_ungrouped_delivery(self, store: Store) -> None:
        sub = await subscribe(store)
        delayed = await publish(store, "later", deliver_at=T0 + 60)
        assert await deliveries_of(store, delayed.id, T0) == [
            status(DeliveryState.WAITING, sub.id, next_attempt_at=T0 + 60)
        ]
        now = await publish(store, "now")
        assert await states(store, now.id, T0) == [DeliveryState.PENDING]
        first = await claim_one(store, T0)
        assert await states(store, now.id, T0 + 1) == [DeliveryState.PENDING]
        await store.retry(first, due_at=T0 + 10, error="HTTP 503", status=503)
        assert await deliveries_of(store, now.id, T0 + 1) == [
            status(
                DeliveryState.WAITING,
                sub.id,
                attempts=1,
                last_status=503,
                last_error="HTTP 503",
                next_attempt_at=T0 + 10,
            )
        ]
        assert await states(store, now.id, T0 + 10) == [DeliveryState.PENDING]
        second = await claim_one(store, T0 + 10)
        await store.ack(second, now=T0 + 11, status=204)
        assert await deliveries_of(store, now.id, T0 + 12) == [
            status(
                DeliveryState.DELIVERED, sub.id, attempts=2, last_status=204, delivered_at=T0 + 11
            )
        ]
        third = await claim_one(store, T0 + 60)
        await store.dead_letter(third, now=T0 + 61, error="HTTP 410", status=410)
        assert await deliveries_of(store, delayed.id, T0 + 62) == [
            status(DeliveryState.DEAD, sub.id, attempts=1, last_status=410, last_error="HTTP 410")
        ]

    async def test_message_states_of_a_group_delivery(self, store: Store) -> None:
        await subscribe(store, group="g")
        await subscribe(store, group="g")
        alone = await subscribe(store)
        sent = await publish(store, "m0")
        before = {d.group: d for d in await deliveries_of(store, sent.id, T0)}
        assert set(before) == {None, "g"}
        assert (before[None].subscription_id, before[None].state) == (
            alone.id,
            DeliveryState.PENDING,
        )
        # Not attempted yet: no member is named.
        assert (before["g"].subscription_id, before["g"].state) == (None, DeliveryState.PENDING)
        (taken,) = (await claim(store, T0, busy={alone.id: 100})).deliveries
        await store.ack(taken, now=T0 + 1, status=200)
        after = {d.group: d for d in await deliveries_of(store, sent.id, T0 + 1)}
        assert after["g"] == status(
            DeliveryState.DELIVERED,
            taken.subscription_id,
            group="g",
            attempts=1,
            last_status=200,
            delivered_at=T0 + 1,
        )
        assert after[None].state is DeliveryState.PENDING

    async def test_a_delivered_message_is_kept_until_swept(self, store: Store) -> None:
        await receiver(store)
        sent = await publish(store, "done")
        await store.ack(await claim_one(store, T0), now=T0 + 5, status=200)
        assert (await store.stats()).queue_length == 0
        assert await store.topic_backlogs() == []
        assert await store.sweep(delivered_before=T0 + 5, dedup_before=0.0) == 0
        assert await store.message(sent.id, T0 + 6) is not None
        assert await store.sweep(delivered_before=T0 + 6, dedup_before=0.0) == 1
        assert await store.message(sent.id, T0 + 7) is None
        assert await store.sweep(delivered_before=T0 + 100, dedup_before=0.0) == 0

    async def test_sweep_keeps_messages_not_yet_done(self, store: Store) -> None:
        await subscribe(store)
        pending = await publish(store, "pending")
        dead = await publish(store, "dead")
        untaken = await publish(store, "nobody takes it", topic="nobody")
        for delivery in (await claim(store, T0)).deliveries:
            if delivery.message_id == dead.id:
                await store.dead_letter(delivery, now=T0, error="HTTP 500", status=500)
        # The message nobody took was done when published: it alone goes.
        assert await store.sweep(delivered_before=T0 + 10_000, dedup_before=0.0) == 1
        for kept in (pending, dead):
            assert await store.message(kept.id, T0 + 1) is not None
        assert await store.message(untaken.id, T0 + 1) is None
        assert len(await all_dead_letters(store)) == 1

    # Topics.

    async def test_topic_figures(self, store: Store) -> None:
        assert await store.topic("orders.eu") is None
        await subscribe(store, "orders.eu")
        assert await store.topic("orders.eu") == TopicInfo("orders.eu", 0, 0, None, 1)
        await subscribe(store, "orders.*")
        await subscribe(store, "orders.>", group="g")
        await receiver(store, "orders.us")
        for n in range(3):
            await publish(store, f"m{n}", topic="orders.eu", at=T0 + n)
        assert await store.topic("orders.eu") == TopicInfo("orders.eu", 3, 3, T0, 3)
        assert await store.topic("orders.us") == TopicInfo("orders.us", 0, 0, None, 3)
        # Patterns are not topics.
        assert await store.topic("orders.*") is None
        claimed = (await claim(store, T0 + 5)).deliveries
        for delivery in claimed:
            if delivery.body == "m0":
                await store.ack(delivery, now=T0 + 6, status=200)
        assert await store.topic("orders.eu") == TopicInfo("orders.eu", 3, 2, T0 + 1, 3)

    async def test_topics_page_by_name(self, store: Store) -> None:
        names = [f"topic.{n:02d}" for n in range(7)]
        for name in names[:4]:
            await publish(store, "m", topic=name)
        for name in names[4:]:
            await subscribe(store, name)
        # A pattern names no topic of its own.
        await subscribe(store, "topic.*")
        for size in (1, 2, 7, 100):
            found = await all_topics(store, page_size=size)
            assert [t.name for t in found] == names, size
        assert (await store.topics(limit=7)).next_cursor is None
        by_name = {t.name: t for t in await all_topics(store)}
        assert by_name["topic.00"] == TopicInfo("topic.00", 1, 0, None, 1)  # nobody took it
        assert by_name["topic.04"] == TopicInfo("topic.04", 0, 0, None, 2)

    async def test_topics_refuse_a_cursor_that_is_no_topic_name(self, store: Store) -> None:
        await publish(store, "m", topic="orders")
        with pytest.raises(BadCursor):
            await store.topics(cursor="not a name")
        assert [t.name for t in (await store.topics(cursor="a")).items] == ["orders"]
