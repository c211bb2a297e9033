"""Conformance: ordering keys (one at a time, in publish order) and delayed delivery."""

from __future__ import annotations

from mqpy.model.domain import EARLIEST
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
    receiver,
    subscribe,
)


class OrderingConformance:
    # Ordering keys.

    async def test_only_the_head_of_a_key_is_claimable(self, store: Store) -> None:
        await subscribe(store)
        await publish(store, "a1", ordering_key="a")
        await publish(store, "a2", ordering_key="a")
        await publish(store, "b1", ordering_key="b")
        await publish(store, "free")
        await publish(store, "a3", ordering_key="a")
        first = await claim(store, T0)
        assert bodies(first) == ["a1", "b1", "free"]
        assert (await claim(store, T0)).deliveries == []
        await ack_all(store, first.deliveries, T0 + 1)
        second = await claim(store, T0 + 1)
        assert bodies(second) == ["a2"]
        await ack_all(store, second.deliveries, T0 + 2)
        assert bodies(await claim(store, T0 + 2)) == ["a3"]

    async def test_a_key_orders_each_subscription_on_its_own(self, store: Store) -> None:
        slow = await subscribe(store)
        fast = await subscribe(store)
        for n in range(3):
            await publish(store, f"k{n}", ordering_key="k")
        first = (await claim(store, T0)).deliveries
        assert by_subscription(first) == {slow.id: ["k0"], fast.id: ["k0"]}
        await ack_all(store, [d for d in first if d.subscription_id == fast.id], T0 + 1)
        # The slow subscription's unfinished head does not hold up the fast one.
        assert by_subscription((await claim(store, T0 + 1)).deliveries) == {fast.id: ["k1"]}

    async def test_a_group_delivers_a_key_one_at_a_time(self, store: Store) -> None:
        await subscribe(store, group="g")
        await subscribe(store, group="g")
        for n in range(4):
            await publish(store, f"k{n}", ordering_key="k")
        seen = []
        for step in range(4):
            claimed = await claim(store, T0 + step)
            assert len(claimed.deliveries) == 1, claimed
            seen.extend(bodies(claimed))
            await ack_all(store, claimed.deliveries, T0 + step)
        assert seen == ["k0", "k1", "k2", "k3"]

    async def test_a_retried_head_blocks_its_key_but_not_others(self, store: Store) -> None:
        await subscribe(store)
        await publish(store, "a1", ordering_key="a")
        await publish(store, "a2", ordering_key="a")
        await publish(store, "b1", ordering_key="b")
        a1, b1 = (await claim(store, T0)).deliveries
        assert (a1.body, b1.body) == ("a1", "b1")
        await store.retry(a1, due_at=T0 + 10, error="HTTP 500", status=500)
        await store.ack(b1, now=T0 + 1, status=200)
        await publish(store, "b2", ordering_key="b", at=T0 + 1)
        blocked = await claim(store, T0 + 2)
        assert bodies(blocked) == ["b2"]
        assert blocked.next_due_at == T0 + 10
        again = await claim_one(store, T0 + 10)
        assert (again.body, again.attempt) == ("a1", 2)
        assert (await claim(store, T0 + 10)).deliveries == []
        await store.ack(again, now=T0 + 11, status=200)
        assert bodies(await claim(store, T0 + 11)) == ["a2"]

    async def test_a_dead_lettered_head_unblocks_the_next(self, store: Store) -> None:
        await subscribe(store)
        await publish(store, "k1", ordering_key="k")
        await publish(store, "k2", ordering_key="k")
        head = await claim_one(store, T0)
        await store.dead_letter(head, now=T0 + 1, error="HTTP 410", status=410)
        assert bodies(await claim(store, T0 + 1)) == ["k2"]

    async def test_a_redriven_head_waits_for_the_key_in_flight(self, store: Store) -> None:
        await subscribe(store)
        await publish(store, "k1", ordering_key="k")
        await publish(store, "k2", ordering_key="k")
        head = await claim_one(store, T0)
        await store.dead_letter(head, now=T0, error="HTTP 500", status=500)
        in_flight = await claim_one(store, T0 + 1)
        assert in_flight.body == "k2"
        assert await store.redrive(T0 + 2) == 1
        # One delivery of a key at a time: k1 waits until k2 is finished.
        assert bodies(await claim(store, T0 + 2)) == []
        await store.ack(in_flight, now=T0 + 3, status=200)
        assert bodies(await claim(store, T0 + 3)) == ["k1"]

    async def test_a_group_dead_lettered_head_unblocks_the_next(self, store: Store) -> None:
        await subscribe(store, group="g")
        await subscribe(store, group="g")
        await publish(store, "k1", ordering_key="k")
        await publish(store, "k2", ordering_key="k")
        head = await claim_one(store, T0)
        assert head.body == "k1"
        await store.dead_letter(head, now=T0 + 1, error="HTTP 410", status=410)
        assert bodies(await claim(store, T0 + 1)) == ["k2"]

    async def test_a_key_follows_publish_order(self, store: Store) -> None:
        await subscribe(store)
        # Publish order, not publish timestamps, orders a key: clocks of several
        # publishers need not agree.
        batch = [message(f"k{n}", at=T0 + 10 - n, ordering_key="k") for n in range(5)]
        await store.publish(batch)
        await publish(store, "k5", at=T0, ordering_key="k")
        seen = []
        for step in range(6):
            delivery = await claim_one(store, T0 + 20 + step)
            seen.append(delivery.body)
            await store.ack(delivery, now=T0 + 20 + step, status=200)
        assert seen == [f"k{n}" for n in range(6)]

    async def test_a_delayed_head_holds_back_its_key(self, store: Store) -> None:
        await subscribe(store)
        await publish(store, "later", ordering_key="k", deliver_at=T0 + 60)
        await publish(store, "after it", ordering_key="k")
        await publish(store, "other key", ordering_key="j")
        claimed = await claim(store, T0)
        assert bodies(claimed) == ["other key"]
        await ack_all(store, claimed.deliveries, T0 + 1)
        assert (await claim(store, T0 + 1)).next_due_at == T0 + 60
        head = await claim_one(store, T0 + 60)
        assert head.body == "later"
        await store.ack(head, now=T0 + 61, status=200)
        assert bodies(await claim(store, T0 + 61)) == ["after it"]

    async def test_replayed_messages_keep_their_ordering_key(self, store: Store) -> None:
        await publish(store, "k1", ordering_key="k")
        await publish(store, "k2", ordering_key="k")
        await receiver(store, now=T0 + 1, start_at=EARLIEST)
        first = await claim_one(store, T0 + 1)
        assert (first.body, first.ordering_key) == ("k1", "k")
        assert (await claim(store, T0 + 1)).deliveries == []

    # Delayed delivery.

    async def test_a_delayed_message_is_not_claimable_before_its_time(self, store: Store) -> None:
        await subscribe(store)
        await publish(store, "delayed", deliver_at=T0 + 60)
        early = await claim(store, T0 + 59)
        assert early.deliveries == []
        assert early.next_due_at == T0 + 60
        delivery = await claim_one(store, T0 + 60)
        assert (delivery.body, delivery.attempt) == ("delayed", 1)
        # The retry policy ages a delayed message from here, not from its publish.
        assert delivery.deliver_at == T0 + 60

    async def test_a_past_deliver_at_means_at_once(self, store: Store) -> None:
        await subscribe(store)
        await publish(store, "overdue", at=T0, deliver_at=T0 - 60)
        assert bodies(await claim(store, T0)) == ["overdue"]

    async def test_delayed_and_immediate_messages_go_in_due_order(self, store: Store) -> None:
        await subscribe(store)
        await publish(store, "in 20", deliver_at=T0 + 20)
        await publish(store, "in 10", deliver_at=T0 + 10)
        await publish(store, "now")
        at_once = await claim(store, T0)
        assert bodies(at_once) == ["now"]
        await ack_all(store, at_once.deliveries, T0 + 1)
        assert bodies(await claim(store, T0 + 30)) == ["in 10", "in 20"]

    async def test_a_replayed_delayed_message_keeps_its_time(self, store: Store) -> None:
        await publish(store, "delayed", deliver_at=T0 + 60)
        await subscribe(store, now=T0 + 10, start_at=EARLIEST)
        early = await claim(store, T0 + 10)
        assert early.deliveries == []
        assert early.next_due_at == T0 + 60
        assert bodies(await claim(store, T0 + 60)) == ["delayed"]
