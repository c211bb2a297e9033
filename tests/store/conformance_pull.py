"""Conformance: pull subscriptions, whose consumers claim their own deliveries."""

from __future__ import annotations

from mqpy.model.domain import ClaimedDelivery, SubscriptionKind, SubscriptionSpec
from mqpy.store.base import Store
from tests.store.support import (
    DEFAULT,
    T0,
    Reopen,
    all_subscriptions,
    by_subscription,
    claim,
    publish,
    subscribe,
)

DEADLINE = 10.0


async def pull_subscription(
    store: Store, topic: str = DEFAULT, *, group: str | None = None, deadline: float = DEADLINE
) -> int:
    spec = SubscriptionSpec(
        url="", topic=topic, group=group, kind=SubscriptionKind.PULL, ack_deadline_seconds=deadline
    )
    return (await store.add_subscription(spec, T0, key_id=None, secret=None)).id


async def pulled(
    store: Store, subscription_id: int, now: float, limit: int = 100
) -> list[ClaimedDelivery]:
    """What a pull for the subscription at `now` leases to it, for DEADLINE."""
    claimed = await store.claim(
        limit=limit,
        now=now,
        lease_seconds=DEADLINE,
        per_subscription_limit=limit,
        busy={},
        for_subscription=subscription_id,
    )
    assert all(d.subscription_id == subscription_id for d in claimed.deliveries)
    return claimed.deliveries


async def pull(store: Store, subscription_id: int, now: float, limit: int = 100) -> list[str]:
    """Bodies pulled for the subscription at `now`."""
    return [d.body for d in await pulled(store, subscription_id, now, limit)]


class PullConformance:
    async def test_a_pull_subscription_keeps_its_kind_and_deadline(
        self, store: Store, reopen: Reopen
    ) -> None:
        subscription = await pull_subscription(store, "orders", deadline=42.0)
        pushed = await subscribe(store, "orders")
        store = await reopen(store)
        found = {s.id: s for s in await all_subscriptions(store)}
        assert found[subscription].spec.kind is SubscriptionKind.PULL
        assert found[subscription].spec.ack_deadline_seconds == 42.0
        assert found[pushed.id].spec.kind is SubscriptionKind.PUSH
        assert (await store.subscription(subscription)) == found[subscription]

    async def test_the_dispatchers_claim_leaves_pull_deliveries_alone(self, store: Store) -> None:
        subscription = await pull_subscription(store)
        pushed = await subscribe(store)
        await publish(store, "m1")
        got = by_subscription((await claim(store, T0)).deliveries)
        assert got == {pushed.id: ["m1"]}
        assert await pull(store, subscription, T0) == ["m1"]

    async def test_a_pull_takes_up_to_its_limit_oldest_first(self, store: Store) -> None:
        subscription = await pull_subscription(store)
        for n in range(5):
            await publish(store, f"m{n}", at=T0 + n)
        assert await pull(store, subscription, T0 + 10, limit=3) == ["m0", "m1", "m2"]
        assert await pull(store, subscription, T0 + 10, limit=3) == ["m3", "m4"]
        assert await pull(store, subscription, T0 + 10) == []

    async def test_a_push_subscription_cannot_be_pulled(self, store: Store) -> None:
        pushed = await subscribe(store)
        await publish(store, "m1")
        assert await pull(store, pushed.id, T0) == []
        assert by_subscription((await claim(store, T0)).deliveries) == {pushed.id: ["m1"]}

    async def test_an_unacked_pull_comes_again_after_its_deadline_with_the_next_attempt(
        self, store: Store
    ) -> None:
        subscription = await pull_subscription(store)
        await publish(store, "m1")
        assert await pull(store, subscription, T0) == ["m1"]
        assert await pull(store, subscription, T0 + DEADLINE - 1) == []
        again = await pulled(store, subscription, T0 + DEADLINE)
        assert [(d.body, d.attempt) for d in again] == [("m1", 2)]

    async def test_pull_members_of_a_group_share_its_messages(self, store: Store) -> None:
        first = await pull_subscription(store, group="workers")
        second = await pull_subscription(store, group="workers")
        for n in range(6):
            await publish(store, f"m{n}", at=T0 + n)
        taken = await pull(store, first, T0 + 10, limit=4)
        rest = await pull(store, second, T0 + 10)
        assert taken == ["m0", "m1", "m2", "m3"]
        assert rest == ["m4", "m5"]

    async def test_leased_answers_only_the_live_leases_of_the_subscription(
        self, store: Store
    ) -> None:
        subscription = await pull_subscription(store)
        other = await pull_subscription(store)
        await publish(store, "m1")
        (delivery,) = await pulled(store, subscription, T0)
        leases = {(delivery.delivery_id, delivery.lease)}
        (held,) = await store.leased(subscription, leases, now=T0 + 1)
        assert (held.message_id, held.attempt, held.body) == (delivery.message_id, 1, "m1")
        assert await store.leased(other, leases, now=T0 + 1) == []
        assert (
            await store.leased(subscription, {(delivery.delivery_id, "forged")}, now=T0 + 1) == []
        )
        assert await store.leased(subscription, leases, now=T0 + DEADLINE) == []
        # Pulled again under a new lease: the old one holds nothing, the new one does.
        assert await pull(store, subscription, T0 + DEADLINE) == ["m1"]
        assert await store.leased(subscription, leases, now=T0 + DEADLINE + 1) == []

    async def test_an_acked_pull_is_done_and_an_extended_one_stays_leased(
        self, store: Store
    ) -> None:
        subscription = await pull_subscription(store)
        await publish(store, "m1")
        await publish(store, "m2")
        first, second = await pulled(store, subscription, T0)
        await store.ack(first, now=T0 + 1, status=None)
        assert await store.renew([second], now=T0 + 1, lease_seconds=100) == []
        assert await pull(store, subscription, T0 + 50) == []
        assert (
            await store.leased(subscription, {(first.delivery_id, first.lease)}, now=T0 + 2) == []
        )
