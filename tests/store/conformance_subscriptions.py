"""Conformance: push subscriptions, their settings, and what a claim carries."""

from __future__ import annotations

import pytest

from mqpy.model.domain import EARLIEST, Mode, RetryOverrides, SubscriptionChanges, SubscriptionSpec
from mqpy.model.errors import BadCursor, Conflict
from mqpy.store.base import Store
from tests.store.support import (
    T0,
    ack_all,
    all_subscriptions,
    bodies,
    by_subscription,
    claim,
    claim_one,
    message,
    publish,
    publish_count,
    receiver,
    sender,
    subscribe,
)

RETRY = RetryOverrides(
    max_attempts=3, min_backoff_seconds=0.5, max_backoff_seconds=9.0, max_age_seconds=600.0
)


class SubscriptionConformance:
    async def test_add_subscription_returns_what_it_stored(self, store: Store) -> None:
        spec = SubscriptionSpec(
            url="http://127.0.0.1:9/hook",
            topic="orders.>",
            group="billing",
            filter={"region": ["eu", "us"], "vip": {"exists": True}},
            retry=RETRY,
            max_concurrency=4,
            max_per_second=2.5,
        )
        made = await store.add_subscription(spec, T0, key_id="key_a", secret="whsec_x")
        assert made.spec == spec
        assert (made.created_at, made.paused, made.key_id, made.connection_id) == (
            T0,
            False,
            "key_a",
            None,
        )
        assert 0 < made.id < 2**53
        assert await store.subscription(made.id) == made
        assert await store.subscription(12345) is None

    async def test_a_receiver_connection_is_a_subscription(self, store: Store) -> None:
        connection = await store.add_connection(
            Mode.RECEIVE, "http://127.0.0.1:9/seed", "orders", T0, key_id="key_a"
        )
        subscription = await store.subscription(connection.id)
        assert subscription is not None
        assert subscription.connection_id == connection.id
        assert (subscription.spec.url, subscription.spec.topic) == (
            "http://127.0.0.1:9/seed",
            "orders",
        )
        assert subscription.key_id == "key_a"
        assert [s.id for s in await all_subscriptions(store)] == [connection.id]
        # Removing the subscription disconnects the receiver.
        assert await store.remove_subscription(connection.id, T0 + 1) == subscription
        assert await store.connections() == []
        assert await store.remove_connection(connection.id, T0 + 2) is None

    async def test_remove_subscription_ends_it_and_drops_its_deliveries(self, store: Store) -> None:
        leaving = await subscribe(store)
        staying = await subscribe(store)
        await publish(store, "m0")
        assert await store.remove_subscription(leaving.id, T0 + 1) == leaving
        assert await store.remove_subscription(leaving.id, T0 + 2) is None
        assert await store.subscription(leaving.id) is None
        assert by_subscription((await claim(store, T0 + 2)).deliveries) == {staying.id: ["m0"]}
        assert (await store.stats()).queue_length == 1
        # A message whose last subscription goes before taking it is done.
        await publish(store, "m1", topic="lonely")
        lonely = await subscribe(store, "lonely", now=T0 + 3)
        await store.remove_subscription(lonely.id, T0 + 4)
        assert (await store.stats()).queue_length == 1
        assert [b.topic for b in await store.topic_backlogs()] == ["default"]

    async def test_subscription_ids_are_never_reused(self, store: Store) -> None:
        ids = set()
        for _ in range(20):
            made = await subscribe(store)
            ids.add(made.id)
            await store.remove_subscription(made.id, T0 + 1)
        ids |= {(await receiver(store)).id for _ in range(10)}
        ids |= {(await sender(store)).id for _ in range(10)}
        assert len(ids) == 40

    # Pause and resume.

    async def test_a_paused_subscription_gets_nothing_until_resumed(self, store: Store) -> None:
        paused = await subscribe(store)
        active = await subscribe(store)
        changed = await store.set_paused(paused.id, True)
        assert changed is not None and changed.paused
        for n in range(3):
            assert await publish_count(store, message(f"m{n}")) == 2
        claimed = await claim(store, T0)
        assert by_subscription(claimed.deliveries) == {active.id: ["m0", "m1", "m2"]}
        await ack_all(store, claimed.deliveries, T0 + 1)
        later = await claim(store, T0 + 1)
        assert later.deliveries == []
        # Only a resume gives it work again, so no due time is reported for it.
        assert later.next_due_at is None
        resumed = await store.set_paused(paused.id, False)
        assert resumed is not None and not resumed.paused
        assert by_subscription((await claim(store, T0 + 1)).deliveries) == {
            paused.id: ["m0", "m1", "m2"]
        }
        assert await store.set_paused(12345, True) is None

    async def test_a_subscription_created_paused_gets_nothing_until_resumed(
        self, store: Store
    ) -> None:
        # Published before anyone subscribed: replayed to it from its start_at.
        assert await publish_count(store, message("early")) == 0
        made = await subscribe(store, paused=True, start_at=EARLIEST)
        assert made.paused
        kept = await store.subscription(made.id)
        assert kept is not None and kept.paused
        assert await publish_count(store, message("later")) == 1
        assert (await claim(store, T0)).deliveries == []
        await store.set_paused(made.id, False)
        assert by_subscription((await claim(store, T0)).deliveries) == {made.id: ["early", "later"]}

    # Concurrency caps.

    async def test_max_concurrency_caps_what_one_claim_gives(self, store: Store) -> None:
        capped = await subscribe(store, max_concurrency=2)
        other = await subscribe(store)
        for n in range(5):
            await publish(store, f"m{n}")
        claimed = (await claim(store, T0, per_subscription_limit=4)).deliveries
        got = by_subscription(claimed)
        assert got == {capped.id: ["m0", "m1"], other.id: ["m0", "m1", "m2", "m3"]}
        assert {d.max_concurrency for d in claimed if d.subscription_id == capped.id} == {2}
        assert {d.max_concurrency for d in claimed if d.subscription_id == other.id} == {None}

    async def test_max_concurrency_caps_a_group_member(self, store: Store) -> None:
        capped = await subscribe(store, group="g", max_concurrency=1)
        roomy = await subscribe(store, group="g")
        for n in range(6):
            await publish(store, f"m{n}")
        got = by_subscription((await claim(store, T0)).deliveries)
        assert len(got[capped.id]) == 1
        assert len(got[roomy.id]) == 5

    # Listing.

    async def test_subscriptions_page_through_every_active_one(self, store: Store) -> None:
        made = [await subscribe(store, f"t{n}") for n in range(7)]
        made.append(await subscribe(store, "t.*", group="g"))
        gone = await subscribe(store)
        await store.remove_subscription(gone.id, T0 + 1)
        await sender(store)
        expected = sorted(s.id for s in made)
        for size in (1, 3, 8, 100):
            assert [s.id for s in await all_subscriptions(store, page_size=size)] == expected
        last = await store.subscriptions(limit=8)
        assert last.next_cursor is None

    async def test_subscriptions_by_topic_include_matching_patterns(self, store: Store) -> None:
        exact = await subscribe(store, "orders.eu")
        one = await subscribe(store, "orders.*")
        deep = await subscribe(store, "orders.>", group="g")
        seed = await receiver(store, "orders.eu")
        everything = await subscribe(store, ">")
        for topic in ("orders", "orders.us", "orders.eu.north", "shipping.eu", "orders.eu.*"):
            await subscribe(store, topic)
        wanted = sorted([exact.id, one.id, deep.id, seed.id, everything.id])
        for size in (1, 2, 100):
            found = await all_subscriptions(store, topic="orders.eu", page_size=size)
            assert [s.id for s in found] == wanted, size
        assert await all_subscriptions(store, topic="nothing.here.at") == [
            s for s in await all_subscriptions(store) if s.id == everything.id
        ]

    async def test_a_garbage_cursor_is_refused(self, store: Store) -> None:
        await subscribe(store)
        with pytest.raises(BadCursor):
            await store.subscriptions(cursor="not a cursor")
        with pytest.raises(BadCursor):
            await store.dead_letters(cursor="not a cursor")

    # Changing settings.

    async def test_update_subscription_changes_what_it_is_given(self, store: Store) -> None:
        made = await subscribe(
            store, filter={"region": "eu"}, max_concurrency=3, max_per_second=5.0
        )
        moved = await store.update_subscription(
            made.id, SubscriptionChanges(url="http://127.0.0.1:9/moved", retry=RETRY)
        )
        assert moved is not None
        assert moved.spec == SubscriptionSpec(
            url="http://127.0.0.1:9/moved",
            topic="default",
            filter={"region": "eu"},
            retry=RETRY,
            max_concurrency=3,
            max_per_second=5.0,
        )
        assert await store.subscription(made.id) == moved
        refiltered = await store.update_subscription(
            made.id, SubscriptionChanges(filter={"region": "us"}, max_concurrency=7)
        )
        assert refiltered is not None
        assert (refiltered.spec.filter, refiltered.spec.max_concurrency) == ({"region": "us"}, 7)
        assert refiltered.spec.max_per_second == 5.0
        await publish(store, "eu", attributes={"region": "eu"})
        await publish(store, "us", attributes={"region": "us"})
        delivery = await claim_one(store, T0)
        assert (delivery.body, delivery.url, delivery.retry) == (
            "us",
            "http://127.0.0.1:9/moved",
            RETRY,
        )
        assert await store.update_subscription(12345, SubscriptionChanges()) is None

    async def test_update_subscription_clears_settings(self, store: Store) -> None:
        made = await subscribe(
            store, filter={"region": "eu"}, max_concurrency=3, max_per_second=5.0, retry=RETRY
        )
        cleared = await store.update_subscription(
            made.id,
            SubscriptionChanges(
                clear_filter=True,
                clear_max_concurrency=True,
                clear_max_per_second=True,
                retry=RetryOverrides(),
            ),
        )
        assert cleared is not None
        assert cleared.spec == SubscriptionSpec(url=made.spec.url, topic="default")
        await publish(store, "any")
        delivery = await claim_one(store, T0)
        assert (delivery.body, delivery.retry, delivery.max_per_second) == (
            "any",
            RetryOverrides(),
            None,
        )

    async def test_a_group_filter_changes_only_with_a_sole_member(self, store: Store) -> None:
        first = await subscribe(store, group="g", filter={"region": "eu"})
        second = await subscribe(store, group="g", filter={"region": "eu"})
        with pytest.raises(Conflict):
            await store.update_subscription(first.id, SubscriptionChanges(filter={"region": "us"}))
        assert (await store.subscription(first.id)) == first
        await store.remove_subscription(second.id, T0 + 1)
        changed = await store.update_subscription(
            first.id, SubscriptionChanges(filter={"region": "us"})
        )
        assert changed is not None and changed.spec.filter == {"region": "us"}
        # New members now join with the new filter.
        await subscribe(store, group="g", filter={"region": "us"})
        await publish(store, "us", attributes={"region": "us"})
        await publish(store, "eu", attributes={"region": "eu"})
        assert bodies(await claim(store, T0 + 2)) == ["us"]

    # What a claim carries.

    async def test_a_delivery_carries_the_message_and_the_subscriptions_settings(
        self, store: Store
    ) -> None:
        made = await subscribe(
            store, "orders.*", retry=RETRY, max_per_second=2.5, secret="whsec_one"
        )
        sent = await publish(
            store, "hello", "orders.eu", attributes={"region": "eu"}, ordering_key="cust-1"
        )
        delivery = await claim_one(store, T0)
        assert delivery.message_id == sent.id
        assert delivery.subscription_id == made.id
        assert delivery.url == made.spec.url
        assert (delivery.topic, delivery.body) == ("orders.eu", "hello")
        assert dict(delivery.attributes) == {"region": "eu"}
        assert delivery.ordering_key == "cust-1"
        assert delivery.retry == RETRY
        assert delivery.max_per_second == 2.5
        assert delivery.secrets == ("whsec_one",)

    async def test_a_plain_delivery_has_no_extras(self, store: Store) -> None:
        await receiver(store)
        await publish(store, "plain")
        delivery = await claim_one(store, T0)
        assert (delivery.topic, dict(delivery.attributes), delivery.ordering_key) == (
            "default",
            {},
            None,
        )
        assert (delivery.retry, delivery.max_per_second, delivery.secrets) == (
            RetryOverrides(),
            None,
            (),
        )

    async def test_a_delivery_carries_both_secrets_during_a_rotation(self, store: Store) -> None:
        made = await subscribe(store, secret="whsec_old")
        assert await store.rotate_secret(made.id, "whsec_new", now=T0, overlap_seconds=60)
        await publish(store, "m0")
        await publish(store, "m1")
        (during,) = (await claim(store, T0 + 10, limit=1)).deliveries
        assert during.secrets == ("whsec_new", "whsec_old")
        (after,) = (await claim(store, T0 + 61, limit=1)).deliveries
        assert after.secrets == ("whsec_new",)
        assert not await store.rotate_secret(12345, "x", now=T0, overlap_seconds=1)
