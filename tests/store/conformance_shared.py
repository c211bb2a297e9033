"""Conformance for a store shared by several broker processes: two store objects on
one store race as two nodes would (PostgreSQL: two nodes on one database; SQLite: two
processes of a `--processes` group on one data directory). These are the hazards a
single store object, serialising its own calls, can never show.

A test class using it provides a `nodes` fixture: two open stores on one store.
`SharedOfferConformance` adds offers racing, for the stores that take them.
"""

from __future__ import annotations

import asyncio

from mqpy.model.domain import ClaimedDelivery
from mqpy.store.base import Store
from tests.store.conformance_offers import StandingOffer
from tests.store.support import (
    LEASE,
    T0,
    claim,
    claim_one,
    message,
    publish,
    publish_count,
    receiver,
    subscribe,
)

Nodes = tuple[Store, Store]


class SharedStoreConformance:
    async def test_racing_claims_hand_out_each_delivery_once(self, nodes: Nodes) -> None:
        a, b = nodes
        for _ in range(3):
            await receiver(a)
        await asyncio.gather(*(publish(a if n % 2 else b, f"m{n}") for n in range(200)))
        claims = await asyncio.gather(
            *(claim(node, T0, limit=25, per_subscription_limit=1000) for node in [a, b] * 20)
        )
        ids = [d.delivery_id for c in claims for d in c.deliveries]
        assert len(ids) == len(set(ids)) == 600

    async def test_a_taken_over_lease_cannot_settle_the_delivery(self, nodes: Nodes) -> None:
        a, b = nodes
        await receiver(a)
        await publish(a, "slow")
        on_a = await claim_one(a, T0)
        on_b = await claim_one(b, T0 + LEASE + 1)  # a's lease ran out: b takes it over
        assert (on_b.delivery_id, on_b.attempt) == (on_a.delivery_id, 2)
        await a.ack(on_a, now=T0 + LEASE + 2, status=200)
        await a.dead_letter(on_a, now=T0 + LEASE + 2, error="late", status=500)
        assert await a.dead_letter_count() == 0
        assert (await b.stats()).queue_length == 1
        await b.ack(on_b, now=T0 + LEASE + 3, status=200)
        stats = await a.stats()
        assert (stats.queue_length, stats.completed) == (0, 1)

    async def test_racing_repeats_of_an_idempotency_key_publish_once(self, nodes: Nodes) -> None:
        a, b = nodes
        await receiver(a)
        tries = [message("once", idempotency_key="k", publisher_key="p") for _ in range(10)]
        results = await asyncio.gather(
            *(node.publish([m]) for node, m in zip([a, b] * 5, tries, strict=True))
        )
        published = [r[0] for r in results]
        assert sum(not p.duplicate for p in published) == 1
        assert len({p.id for p in published}) == 1
        assert (await a.stats()).queue_length == 1

    async def test_a_receiver_connected_through_one_node_gets_the_others_next_publish(
        self, nodes: Nodes
    ) -> None:
        a, b = nodes
        await subscribe(b, "early")
        assert await publish_count(b, message("warm", topic="early")) == 1  # b's routes cached
        await receiver(a, "t")
        made = await subscribe(a, "t")
        assert await publish_count(b, message("after", topic="t")) == 2
        handed = (await claim(b, T0 + 1, limit=10)).deliveries
        assert sorted(d.body for d in handed if d.topic == "t") == ["after", "after"]
        assert made.id in {d.subscription_id for d in handed}

    async def test_a_subscriptions_max_concurrency_bounds_every_node_together(
        self, nodes: Nodes
    ) -> None:
        a, b = nodes
        capped = await subscribe(a, "t", max_concurrency=3)
        for n in range(10):
            await publish(b, f"m{n}", topic="t")
        # Each node's dispatcher counts only what it holds itself: nothing, here.
        on_a = (await claim(a, T0)).deliveries
        on_b = (await claim(b, T0)).deliveries
        assert (len(on_a), len(on_b)) == (3, 0)
        await a.ack(on_a[0], now=T0 + 1, status=200)
        more = (await claim(b, T0 + 1)).deliveries
        assert len(more) == 1
        # Leases that ran out no longer count: their holder is presumed gone.
        after_expiry = (await claim(b, T0 + 2 + LEASE)).deliveries
        assert len(after_expiry) == 3
        assert {d.subscription_id for d in [*on_a, *more, *after_expiry]} == {capped.id}

    async def test_racing_claims_keep_a_subscriptions_max_concurrency(self, nodes: Nodes) -> None:
        a, b = nodes
        await subscribe(a, "t", max_concurrency=4)
        await asyncio.gather(*(publish(a if n % 2 else b, f"m{n}", topic="t") for n in range(40)))
        claims = await asyncio.gather(*(claim(node, T0) for node in [a, b] * 5))
        handed: list[ClaimedDelivery] = [d for c in claims for d in c.deliveries]
        assert len(handed) == 4

    async def test_a_group_members_max_concurrency_bounds_every_node_together(
        self, nodes: Nodes
    ) -> None:
        a, b = nodes
        capped = await subscribe(a, "orders", group="billing", max_concurrency=2)
        other = await subscribe(b, "orders", group="billing")
        for n in range(10):
            await publish(a, f"o{n}", topic="orders")
        first = (await claim(a, T0, per_subscription_limit=3)).deliveries
        second = (await claim(b, T0, per_subscription_limit=3)).deliveries
        held = [d.subscription_id for d in [*first, *second]]
        assert held.count(capped.id) == 2
        assert held.count(other.id) == 6  # its own cap (the caller's) on each node


class SharedOfferConformance:
    """Offers (`Store.offer_claim`) racing on a shared store: for the stores that take
    them (SQLite, PostgreSQL; the in-memory store takes none)."""

    async def test_offers_taken_by_racing_publishes_lease_each_delivery_once(
        self, nodes: Nodes
    ) -> None:
        # Each node's dispatcher leaves a claim with its store, and offers again each
        # time a publish takes it: both nodes' publishes run claims against each other.
        a, b = nodes
        for _ in range(3):
            await receiver(a)
        await asyncio.gather(*(publish(node, "waiting") for node in [a, b] * 30))
        offers = [StandingOffer(a), StandingOffer(b)]
        publishes = asyncio.gather(
            *(node.publish([message(f"m{n}")]) for n, node in enumerate([a, b] * 30))
        )
        # Claims of their own race the offers too (another dispatcher of each node's
        # group, or one whose offer was withdrawn).
        claims = asyncio.gather(*(claim(node, T0 + 1, limit=5) for node in [a, b] * 10))
        published, claimed_meanwhile = await asyncio.gather(publishes, claims)
        for offer in offers:
            offer.stop()
        assert all(offer.failures == 0 for offer in offers)
        assert all(offer.leased() for offer in offers), "each node's offers took some"
        left = await asyncio.gather(
            *(claim(node, T0 + 2, limit=1000, per_subscription_limit=1000) for node in [a, b])
        )
        handed = [d for offer in offers for d in offer.leased()] + [
            d for c in [*claimed_meanwhile, *left] for d in c.deliveries
        ]
        ids = [d.delivery_id for d in handed]
        assert len(ids) == len(set(ids)) == 360
        # A publish said "claimed" only if its deliveries were leased in its transaction.
        claimed = {p.id for (p,) in published if p.claimed}
        leased = {d.message_id for offer in offers for d in offer.leased()}
        assert claimed <= leased

    async def test_offers_taken_by_racing_publishes_keep_a_subscriptions_max_concurrency(
        self, nodes: Nodes
    ) -> None:
        a, b = nodes
        await subscribe(a, "t", max_concurrency=4)
        offers = [StandingOffer(a), StandingOffer(b)]
        await asyncio.gather(*(publish(a if n % 2 else b, f"m{n}", topic="t") for n in range(40)))
        for offer in offers:
            offer.stop()
        claims = await asyncio.gather(*(claim(node, T0 + 2) for node in [a, b] * 3))
        taken = [d for offer in offers for d in offer.leased()]
        assert len(taken) == 4
        assert [d for c in claims for d in c.deliveries] == []
