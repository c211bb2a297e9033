"""Conformance: a claim offered to the next publish transaction (`Store.offer_claim`).

Mixed into the suites of the stores that take offers (SQLite, PostgreSQL; the in-memory
store answers False and claims only when asked). Such a store must lease in the
publish's transaction exactly what `claim` would have, answer before the publish
returns, and mark the publishes whose deliveries it took.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping

from mqpy.model.domain import (
    Claim,
    ClaimedDelivery,
    ClaimOffer,
    Published,
    SubscriptionKind,
    SubscriptionSpec,
)
from mqpy.store.base import Store
from tests.store.support import LEASE, T0, claim, message, subscribe


class Offer:
    """An offer made to `store`, and the answers it got (None: rolled back)."""

    def __init__(
        self, store: Store, *, limit: int = 100, busy: Mapping[int, int] | None = None
    ) -> None:
        self.answers: list[Claim | None] = []
        offer = ClaimOffer(
            limit=limit,
            lease_seconds=LEASE,
            per_subscription_limit=100,
            busy=busy or {},
            clock=lambda: T0 + 1,
        )
        assert store.offer_claim(offer, self.answers.append)

    def leased(self) -> list[str]:
        """The bodies the one answer leased."""
        (answer,) = self.answers
        assert answer is not None
        return [delivery.body for delivery in answer.deliveries]


class StandingOffer:
    """A dispatcher with room to spare: it offers a claim, and offers again each time a
    publish takes one, until `stop`. Its `busy` counts what it leased, as a dispatcher
    counts what it holds."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.claims: list[Claim] = []
        self.failures = 0
        self._standing = True
        self._make()

    def leased(self) -> list[ClaimedDelivery]:
        return [delivery for claim in self.claims for delivery in claim.deliveries]

    def stop(self) -> None:
        self._standing = False
        self.store.withdraw_claim()

    def _make(self) -> None:
        busy = Counter(delivery.subscription_id for delivery in self.leased())
        offer = ClaimOffer(
            limit=1000,
            lease_seconds=LEASE,
            per_subscription_limit=1000,
            busy=dict(busy),
            clock=lambda: T0 + 1,
        )
        assert self.store.offer_claim(offer, self._answered)

    def _answered(self, claim: Claim | None) -> None:
        if claim is None:
            self.failures += 1
        else:
            self.claims.append(claim)
        if self._standing:
            self._make()


async def publish_one(store: Store, body: str, *, deliver_at: float | None = None) -> Published:
    (published,) = await store.publish([message(body, deliver_at=deliver_at)])
    return published


class OfferConformance:
    async def test_the_next_publish_leases_its_deliveries_and_says_so(self, store: Store) -> None:
        await subscribe(store)
        await subscribe(store)
        offer = Offer(store)
        published = await publish_one(store, "taken at once")
        # Answered before the publish returned, with the publish's two deliveries.
        assert offer.leased() == ["taken at once", "taken at once"]
        assert published.claimed and published.deliveries == 2
        assert (await claim(store, T0 + 2)).deliveries == []
        # Taken once: the next publish finds no offer.
        assert not (await publish_one(store, "claimed as before")).claimed
        assert len(offer.answers) == 1
        assert [d.body for d in (await claim(store, T0 + 2)).deliveries] == [
            "claimed as before"
        ] * 2

    async def test_a_withdrawn_offer_is_not_taken(self, store: Store) -> None:
        await subscribe(store)
        offer = Offer(store)
        assert store.withdraw_claim()
        published = await publish_one(store, "left for a claim")
        assert not published.claimed
        await asyncio.sleep(0)  # an answer would have been scheduled by now
        assert offer.answers == []
        assert [d.body for d in (await claim(store, T0 + 2)).deliveries] == ["left for a claim"]

    async def test_what_the_offer_has_no_room_for_is_left_and_said_so(self, store: Store) -> None:
        roomy = await subscribe(store)
        full = await subscribe(store)
        offer = Offer(store, busy={full.id: 100})
        published = await publish_one(store, "half taken")
        assert offer.leased() == ["half taken"]
        assert offer.answers[0] is not None
        assert [d.subscription_id for d in offer.answers[0].deliveries] == [roomy.id]
        assert not published.claimed
        left = (await claim(store, T0 + 2)).deliveries
        assert [d.subscription_id for d in left] == [full.id]

    async def test_a_delayed_message_is_left_for_its_time(self, store: Store) -> None:
        await subscribe(store)
        offer = Offer(store)
        published = await publish_one(store, "later", deliver_at=T0 + 60)
        # Nothing was due now: the offer stays for a publish that makes something due.
        assert not published.claimed
        assert offer.answers == []
        assert (await claim(store, T0 + 2)).deliveries == []
        assert await publish_one(store, "now")
        assert offer.leased() == ["now"]

    async def test_a_pull_subscriptions_deliveries_are_never_offered(self, store: Store) -> None:
        spec = SubscriptionSpec(url="", topic="default", kind=SubscriptionKind.PULL)
        await store.add_subscription(spec, T0, key_id=None, secret=None)
        await subscribe(store)
        offer = Offer(store)
        published = await publish_one(store, "pushed and pulled")
        assert offer.leased() == ["pushed and pulled"]
        assert not published.claimed  # the pull consumer must still hear of it
