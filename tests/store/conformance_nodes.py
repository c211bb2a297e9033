"""Conformance: what nodes sharing a store rely on (connection look-ups, the catalog
version, renewed leases, heartbeats, one clock)."""

from __future__ import annotations

import time

from mqpy.auth.keys import new_key
from mqpy.model.domain import NodeInfo, RetryOverrides, Role, SubscriptionChanges
from mqpy.store.base import Store
from tests.store.support import (
    LEASE,
    T0,
    claim,
    claim_one,
    publish,
    receiver,
    sender,
    subscribe,
)


class NodeConformance:
    async def test_a_connection_is_found_by_id_until_it_disconnects(self, store: Store) -> None:
        writer = await sender(store)
        reader = await receiver(store)
        assert await store.connection(writer.id) == writer
        assert await store.connection(reader.id) == reader
        assert await store.connection(writer.id + 1) is None
        await store.remove_connection(writer.id, T0 + 1)
        assert await store.connection(writer.id) is None

    async def test_the_catalog_version_moves_with_every_change_of_what_nodes_cache(
        self, store: Store
    ) -> None:
        seen = [await store.catalog_version()]

        async def moved() -> bool:
            seen.append(await store.catalog_version())
            return seen[-1] != seen[-2]

        writer = await sender(store)
        assert await moved()
        reader = await receiver(store)
        assert await moved()
        made = await subscribe(store, "t")
        assert await moved()
        await store.update_subscription(
            made.id, SubscriptionChanges(retry=RetryOverrides(max_attempts=2))
        )
        assert await moved()
        await store.set_paused(made.id, True)
        assert await moved()
        await store.rotate_secret(made.id, "whsec_new", now=T0, overlap_seconds=60)
        assert await moved()
        key, _ = new_key(Role.PUBLISHER, (), T0)
        await store.add_key(key)
        assert await moved()
        await store.revoke_key(key.id, T0 + 1)
        assert await moved()
        # Traffic changes nothing a node caches.
        await publish(store, "m")
        for delivery in (await claim(store, T0)).deliveries:
            await store.ack(delivery, now=T0, status=200)
        assert not await moved()
        await store.remove_subscription(made.id, T0 + 2)
        assert await moved()
        await store.remove_connection(reader.id, T0 + 2)
        assert await moved()
        await store.remove_connection(writer.id, T0 + 2)
        assert await moved()

    async def test_a_renewed_lease_holds_past_its_first_end(self, store: Store) -> None:
        await receiver(store)
        await publish(store, "long")
        held = await claim_one(store, T0)
        assert await store.renew([held], now=T0 + LEASE - 1, lease_seconds=LEASE) == []
        assert (await claim(store, T0 + LEASE + 1)).deliveries == []
        again = await claim_one(store, T0 + 2 * LEASE)
        assert again.delivery_id == held.delivery_id

    async def test_a_lease_taken_over_or_settled_cannot_be_renewed(self, store: Store) -> None:
        await receiver(store)
        await publish(store, "a")
        await publish(store, "b")
        first, second = (await claim(store, T0)).deliveries
        await store.ack(second, now=T0 + 1, status=200)
        taken = await claim_one(store, T0 + LEASE + 1)  # first's lease ran out
        assert taken.delivery_id == first.delivery_id
        lost = await store.renew([first, second], now=T0 + LEASE + 2, lease_seconds=LEASE)
        assert sorted(lost) == sorted([first.delivery_id, second.delivery_id])
        assert await store.renew([taken], now=T0 + LEASE + 2, lease_seconds=LEASE) == []

    async def test_nodes_are_listed_while_their_heartbeats_are_recent(self, store: Store) -> None:
        one = NodeInfo("host:1:aa", T0, T0 + 5, "http://127.0.0.1:1", held=3, in_flight=1)
        two = NodeInfo("host:2:bb", T0, T0 + 9, "http://127.0.0.1:2")
        await store.heartbeat(one)
        await store.heartbeat(two)
        assert await store.nodes(seen_since=T0) == [one, two]
        assert await store.nodes(seen_since=T0 + 6) == [two]
        later = NodeInfo("host:1:aa", T0, T0 + 20, "http://127.0.0.1:1", held=0, in_flight=0)
        await store.heartbeat(later)
        assert await store.nodes(seen_since=T0 + 10) == [later]

    async def test_the_clock_is_close_to_this_hosts(self, store: Store) -> None:
        # On one host the database's clock and ours agree to well within a second.
        assert abs(store.clock() - time.time()) < 1.0
