"""Conformance: messages nobody took, a new subscription's start_at, and seek."""

from __future__ import annotations

from mqpy.model.domain import EARLIEST, ClaimedDelivery, SeekResult
from mqpy.store.base import Store
from tests.store.support import (
    T0,
    ack_all,
    bodies,
    by_subscription,
    claim,
    claim_one,
    message,
    publish,
    publish_count,
    subscribe,
)

LATER = T0 + 1000  # "now" in these tests: after every publish


async def publish_run(store: Store, count: int) -> None:
    """m0 .. m{count-1}, published one second apart from T0."""
    for n in range(count):
        await publish(store, f"m{n}", at=T0 + n)


class ReplayConformance:
    # Messages no subscription takes.

    async def test_a_message_nobody_takes_is_done_and_no_later_subscription_gets_it(
        self, store: Store
    ) -> None:
        assert await publish_count(store, message("unheard", at=T0)) == 0
        assert (await store.stats()).queue_length == 0
        assert await store.topic_backlogs() == []
        later = await subscribe(store, now=T0 + 5)
        assert (await claim(store, T0 + 5)).deliveries == []
        await publish(store, "heard", at=T0 + 6)
        assert by_subscription((await claim(store, T0 + 6)).deliveries) == {later.id: ["heard"]}

    async def test_a_message_every_subscription_filters_out_is_not_backlog(
        self, store: Store
    ) -> None:
        await subscribe(store, filter={"region": "eu"})
        sent = message("us only", at=T0, attributes={"region": "us"})
        assert await publish_count(store, sent) == 0
        assert (await store.stats()).queue_length == 0
        assert await store.topic_backlogs() == []
        info = await store.topic("default")
        assert info is not None and info.backlog == 0
        await subscribe(store, now=T0 + 5)
        assert (await claim(store, T0 + 5)).deliveries == []
        # Kept for the retention window like a delivered message, then swept.
        assert await store.message(sent.id, T0 + 5) is not None
        assert await store.sweep(delivered_before=T0 + 1, dedup_before=0) == 1
        assert await store.message(sent.id, T0 + 5) is None

    # start_at.

    async def test_start_at_earliest_takes_every_retained_message_in_order(
        self, store: Store
    ) -> None:
        await publish_run(store, 3)
        await publish(store, "other topic", "elsewhere", at=T0)
        made = await subscribe(store, now=LATER, start_at=EARLIEST)
        assert bodies(await claim(store, LATER)) == ["m0", "m1", "m2"]
        assert (await store.stats()).queue_length == 3
        assert made.id

    async def test_start_at_a_time_takes_what_was_published_from_then(self, store: Store) -> None:
        await publish_run(store, 4)
        await subscribe(store, now=LATER, start_at=T0 + 2)
        assert bodies(await claim(store, LATER)) == ["m2", "m3"]

    async def test_start_at_new_takes_nothing_old(self, store: Store) -> None:
        await publish_run(store, 2)
        await subscribe(store, now=LATER)
        assert (await claim(store, LATER)).deliveries == []

    async def test_start_at_keeps_to_the_pattern_and_the_filter(self, store: Store) -> None:
        await publish(store, "eu order", "orders.eu", attributes={"kind": "paid"})
        await publish(store, "us order", "orders.us", attributes={"kind": "refund"})
        await publish(store, "invoice", "invoices", attributes={"kind": "paid"})
        await subscribe(store, "orders.*", filter={"kind": "paid"}, now=LATER, start_at=EARLIEST)
        assert bodies(await claim(store, LATER)) == ["eu order"]

    async def test_start_at_replays_delivered_messages_to_a_new_subscription(
        self, store: Store
    ) -> None:
        await subscribe(store)
        await publish_run(store, 2)
        await ack_all(store, (await claim(store, T0 + 2)).deliveries, T0 + 2)
        assert (await store.stats()).queue_length == 0
        late = await subscribe(store, now=LATER, start_at=EARLIEST)
        assert by_subscription((await claim(store, LATER)).deliveries) == {late.id: ["m0", "m1"]}
        # Done messages due again are kept until delivered, not swept.
        assert await store.sweep(delivered_before=LATER + 1, dedup_before=0) == 0

    async def test_a_member_joining_a_group_takes_its_place_and_replays_nothing(
        self, store: Store
    ) -> None:
        first = await subscribe(store, group="workers")
        await publish_run(store, 2)
        await ack_all(store, (await claim(store, T0 + 2)).deliveries, T0 + 2)
        await subscribe(store, group="workers", now=LATER, start_at=EARLIEST)
        assert (await claim(store, LATER)).deliveries == []
        assert first.id

    # Seek.

    async def test_seek_back_makes_what_followed_the_time_due_again_from_attempt_one(
        self, store: Store
    ) -> None:
        sub = await subscribe(store)
        await publish_run(store, 4)
        got = (await claim(store, T0 + 4)).deliveries
        await ack_all(store, got[:2], T0 + 4)  # m0, m1 delivered
        await store.dead_letter(got[2], now=T0 + 4, error="HTTP 500", status=500)  # m2
        await store.retry(got[3], due_at=T0 + 500, error="HTTP 503", status=503)  # m3 waits
        result = await store.seek(sub.id, T0 + 1, LATER)
        assert result == SeekResult(due=3, acked=0, in_flight=0)
        again = (await claim(store, LATER)).deliveries
        assert [(d.body, d.attempt) for d in again] == [("m1", 1), ("m2", 1), ("m3", 1)]
        assert await store.dead_letter_count() == 0

    async def test_seek_acks_the_pending_deliveries_before_the_time(self, store: Store) -> None:
        sub = await subscribe(store)
        await publish_run(store, 4)
        completed = (await store.stats()).completed
        result = await store.seek(sub.id, T0 + 2, LATER)
        assert result == SeekResult(due=2, acked=2, in_flight=0)
        assert bodies(await claim(store, LATER)) == ["m2", "m3"]
        stats = await store.stats()
        assert (stats.queue_length, stats.completed) == (2, completed)

    async def test_seek_into_the_future_acks_everything_up_to_now(self, store: Store) -> None:
        sub = await subscribe(store)
        await publish_run(store, 3)
        result = await store.seek(sub.id, LATER + 3600, LATER)
        assert result == SeekResult(due=0, acked=3, in_flight=0)
        assert (await claim(store, LATER)).deliveries == []
        assert (await store.stats()).queue_length == 0
        # Done as of the seek: swept once the retention window has passed.
        assert await store.sweep(delivered_before=LATER, dedup_before=0) == 0
        assert await store.sweep(delivered_before=LATER + 1, dedup_before=0) == 3

    async def test_seek_leaves_a_delivery_in_flight_to_its_holder(self, store: Store) -> None:
        sub = await subscribe(store)
        await publish_run(store, 2)
        held = await claim_one_of(store, T0 + 2)
        result = await store.seek(sub.id, T0, T0 + 3)
        assert result == SeekResult(due=1, acked=0, in_flight=1)
        assert bodies(await claim(store, T0 + 3)) == ["m1"]
        await store.ack(held, now=T0 + 4, status=200)
        info = await store.message(held.message_id, T0 + 4)
        assert info is not None and [d.state.value for d in info.deliveries] == ["delivered"]

    async def test_seek_does_not_replay_what_retention_swept(self, store: Store) -> None:
        sub = await subscribe(store)
        await publish_run(store, 3)
        got = (await claim(store, T0 + 3)).deliveries
        await ack_all(store, got[:1], T0 + 3)
        await ack_all(store, got[1:], T0 + 20)
        assert await store.sweep(delivered_before=T0 + 10, dedup_before=0) == 1  # m0
        result = await store.seek(sub.id, EARLIEST, LATER)
        assert result is not None and result.due == 2
        assert bodies(await claim(store, LATER)) == ["m1", "m2"]

    async def test_seek_on_a_group_member_moves_the_groups_deliveries(self, store: Store) -> None:
        a = await subscribe(store, group="workers")
        b = await subscribe(store, group="workers")
        await publish_run(store, 2)
        await ack_all(store, (await claim(store, T0 + 2)).deliveries, T0 + 2)
        assert await store.seek(b.id, EARLIEST, LATER) == SeekResult(due=2, acked=0, in_flight=0)
        again = (await claim(store, LATER)).deliveries
        assert sorted(d.body for d in again) == ["m0", "m1"]
        assert {d.subscription_id for d in again} <= {a.id, b.id}

    async def test_a_paused_subscription_seeks_but_gets_nothing_until_resumed(
        self, store: Store
    ) -> None:
        sub = await subscribe(store)
        await publish_run(store, 2)
        await ack_all(store, (await claim(store, T0 + 2)).deliveries, T0 + 2)
        await store.set_paused(sub.id, True)
        assert await store.seek(sub.id, EARLIEST, LATER) == SeekResult(2, 0, 0)
        assert (await claim(store, LATER)).deliveries == []
        await store.set_paused(sub.id, False)
        assert bodies(await claim(store, LATER)) == ["m0", "m1"]

    async def test_seek_keeps_an_ordering_keys_publish_order(self, store: Store) -> None:
        await publish(store, "k0", at=T0, ordering_key="k")  # before the subscription
        sub = await subscribe(store, now=T0 + 1)
        await publish(store, "k1", at=T0 + 2, ordering_key="k")
        await ack_all(store, (await claim(store, T0 + 3)).deliveries, T0 + 3)
        await store.seek(sub.id, EARLIEST, LATER)
        seen = []
        for step in range(2):
            head = await claim_one(store, LATER + step)
            seen.append(head.body)
            await store.ack(head, now=LATER + step, status=200)
        assert seen == ["k0", "k1"]

    async def test_seek_keeps_to_the_filter_and_answers_none_for_an_unknown_id(
        self, store: Store
    ) -> None:
        sub = await subscribe(store, filter={"region": "eu"})
        await publish(store, "eu", at=T0, attributes={"region": "eu"})
        await publish(store, "us", at=T0 + 1, attributes={"region": "us"})
        await ack_all(store, (await claim(store, T0 + 2)).deliveries, T0 + 2)
        assert await store.seek(sub.id, EARLIEST, LATER) == SeekResult(1, 0, 0)
        assert bodies(await claim(store, LATER)) == ["eu"]
        assert await store.seek(sub.id + 1, EARLIEST, LATER) is None


async def claim_one_of(store: Store, now: float) -> ClaimedDelivery:
    """The first delivery a claim hands out (leased until now + LEASE)."""
    claimed = (await claim(store, now, limit=1)).deliveries
    assert len(claimed) == 1
    return claimed[0]
