"""Conformance: deliveries that are never attempted still expire at their max-age."""

from __future__ import annotations

from mqpy.model.domain import RetryOverrides
from mqpy.store.base import Store
from tests.store.support import (
    LEASE,
    T0,
    all_dead_letters,
    claim,
    claim_one,
    publish,
    receiver,
    subscribe,
)

MAX_AGE = 60.0


class ExpiryConformance:
    async def test_a_paused_subscriptions_delivery_expires_at_its_max_age(
        self, store: Store
    ) -> None:
        reader = await receiver(store)
        await store.set_paused(reader.id, True)
        old = await publish(store, "never attempted")
        await publish(store, "younger", at=T0 + 30)
        assert await store.expire(now=T0 + MAX_AGE - 1, max_age=MAX_AGE) == 0
        assert await store.expire(now=T0 + MAX_AGE + 1, max_age=MAX_AGE) == 1
        (dead,) = await all_dead_letters(store)
        assert (dead.message_id, dead.receiver_id, dead.attempts) == (old.id, reader.id, 0)
        assert dead.dead_at == T0 + MAX_AGE + 1
        assert dead.last_error == "not delivered within its max-age of 1m"
        await store.set_paused(reader.id, False)
        (left,) = (await claim(store, T0 + MAX_AGE + 2)).deliveries
        assert left.body == "younger"

    async def test_a_subscriptions_own_max_age_and_a_delayed_messages_start_count(
        self, store: Store
    ) -> None:
        brief = await subscribe(store, retry=RetryOverrides(max_age_seconds=10.0))
        await store.set_paused(brief.id, True)
        await publish(store, "now")
        await publish(store, "later", deliver_at=T0 + 100)
        assert await store.expire(now=T0 + 11, max_age=MAX_AGE) == 1
        # The delayed one ages from its deliver_at, not from its publish.
        assert await store.expire(now=T0 + 109, max_age=MAX_AGE) == 0
        assert await store.expire(now=T0 + 111, max_age=MAX_AGE) == 1
        assert {d.body for d in await all_dead_letters(store)} == {"now", "later"}
        assert all(
            d.last_error == "not delivered within its max-age of 10s"
            for d in await all_dead_letters(store)
        )

    async def test_a_delivery_under_a_live_lease_is_left_to_its_claimer(self, store: Store) -> None:
        await receiver(store)
        await publish(store, "in flight")
        held = await claim_one(store, T0 + MAX_AGE)
        assert await store.expire(now=T0 + MAX_AGE + 1, max_age=MAX_AGE) == 0
        await store.ack(held, now=T0 + MAX_AGE + 2, status=200)
        assert await all_dead_letters(store) == []
        # A lease that ran out protects nothing: its claimer died.
        await publish(store, "orphaned", at=T0 + 100)
        await claim_one(store, T0 + 100)
        assert await store.expire(now=T0 + 100 + LEASE + 1, max_age=LEASE) == 1
        assert [d.body for d in await all_dead_letters(store)] == ["orphaned"]

    async def test_a_groups_unattempted_delivery_expires_under_a_member(self, store: Store) -> None:
        first = await subscribe(store, group="billing")
        second = await subscribe(store, group="billing", retry=RetryOverrides(max_age_seconds=90))
        await store.set_paused(first.id, True)
        await store.set_paused(second.id, True)
        await publish(store, "for the group")
        # The group keeps it for its most patient member.
        assert await store.expire(now=T0 + MAX_AGE + 1, max_age=MAX_AGE) == 0
        assert await store.expire(now=T0 + 91, max_age=MAX_AGE) == 1
        (dead,) = await all_dead_letters(store)
        assert dead.receiver_id in (first.id, second.id)
        assert dead.body == "for the group"
