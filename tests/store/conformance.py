"""The behaviour every `Store` backend must have, written against the interface alone.

A backend's test module subclasses `StoreConformance` once and provides two fixtures:

- `store`: an opened store on a fresh, empty location, closed after the test;
- `reopen`: a coroutine function that closes the store it is given and returns a new,
  opened store on the same location (the same directory, the same database), which
  the fixture closes after the test. Durability tests use it to restart the broker.

Nothing here knows about SQL or files, so a PostgreSQL or JetStream backend runs the
same tests unchanged. Times are supplied by the tests (the interface takes `now`), so
leases and schedules are tested without sleeping.

The suite is one class, `StoreConformance`, made of the tests here and of the themed
mixins in the `conformance_*` modules beside it; the helpers are in `support`.
"""

from __future__ import annotations

import asyncio

import pytest

from mqpy.model.domain import EARLIEST, Mode
from mqpy.model.errors import StoreUnavailable
from mqpy.store.base import Store, TopicBacklog
from tests.store.conformance_endpoint_health import EndpointHealthConformance
from tests.store.conformance_expiry import ExpiryConformance
from tests.store.conformance_formats import FormatConformance
from tests.store.conformance_groups import GroupConformance
from tests.store.conformance_health import HealthConformance
from tests.store.conformance_history import HistoryConformance
from tests.store.conformance_inspection import InspectionConformance
from tests.store.conformance_nodes import NodeConformance
from tests.store.conformance_ordering import OrderingConformance
from tests.store.conformance_publish import PublishConformance
from tests.store.conformance_pull import PullConformance
from tests.store.conformance_replay import ReplayConformance
from tests.store.conformance_routing import RoutingConformance
from tests.store.conformance_subscriptions import SubscriptionConformance
from tests.store.support import (
    DEFAULT,
    LEASE,
    T0,
    Reopen,
    all_dead_letters,
    bodies,
    claim,
    claim_one,
    dead_letter_everything,
    message,
    publish,
    publish_count,
    receiver,
    sender,
)


class StoreConformance(
    EndpointHealthConformance,
    HealthConformance,
    HistoryConformance,
    RoutingConformance,
    GroupConformance,
    OrderingConformance,
    PublishConformance,
    SubscriptionConformance,
    InspectionConformance,
    NodeConformance,
    ExpiryConformance,
    PullConformance,
    ReplayConformance,
    FormatConformance,
):
    """Every behaviour of the `Store` interface. Subclass once per backend."""

    # Connections.

    async def test_connection_ids_are_random_positive_below_2_53_and_never_reused(
        self, store: Store
    ) -> None:
        first = [await receiver(store) for _ in range(20)]
        first += [await sender(store) for _ in range(20)]
        for connection in first[::2]:
            await store.remove_connection(connection.id, T0 + 1)
        later = [await sender(store, now=T0 + 2) for _ in range(20)]
        ids = [c.id for c in first + later]
        assert len(set(ids)) == len(ids)
        assert all(0 < i < 2**53 for i in ids)
        # Sequential or clustered ids would be guessable; 60 random ones spread widely.
        assert max(ids) - min(ids) > 2**40

    async def test_add_connection_returns_what_it_registered(self, store: Store) -> None:
        connection = await store.add_connection(Mode.RECEIVE, "http://127.0.0.1:9/x", "t", T0)
        assert connection.mode is Mode.RECEIVE
        assert connection.client_url == "http://127.0.0.1:9/x"
        assert connection.topic == "t"
        assert connection.connected_at == T0

    async def test_remove_connection_answers_the_connection_once(self, store: Store) -> None:
        connection = await sender(store)
        assert await store.remove_connection(connection.id, T0 + 1) == connection
        assert await store.remove_connection(connection.id, T0 + 2) is None
        assert await store.remove_connection(12345, T0 + 2) is None

    async def test_connections_lists_only_connected_ones(self, store: Store) -> None:
        assert await store.connections() == []
        kept_receiver = await receiver(store)
        gone_receiver = await receiver(store)
        kept_sender = await sender(store)
        gone_sender = await sender(store)
        await store.remove_connection(gone_receiver.id, T0 + 1)
        await store.remove_connection(gone_sender.id, T0 + 1)
        listed = await store.connections()
        assert sorted(listed, key=lambda c: c.id) == sorted(
            [kept_receiver, kept_sender], key=lambda c: c.id
        )

    # Publishing and fan-out.

    async def test_publish_to_one_receiver_creates_its_delivery(self, store: Store) -> None:
        reader = await receiver(store)
        new = message("hello", at=T0)
        assert await publish_count(store, new) == 1
        delivery = await claim_one(store, T0)
        assert delivery.message_id == new.id
        assert delivery.body == "hello"
        assert delivery.subscription_id == reader.id
        assert delivery.url == reader.client_url
        assert delivery.published_at == T0
        assert delivery.attempt == 1

    async def test_publish_fans_out_one_delivery_per_receiver(self, store: Store) -> None:
        readers = [await receiver(store) for _ in range(3)]
        new = message("to all")
        assert await publish_count(store, new) == 3
        claimed = (await claim(store, T0)).deliveries
        assert sorted(d.subscription_id for d in claimed) == sorted(r.id for r in readers)
        assert {d.url for d in claimed} == {r.client_url for r in readers}
        assert {d.message_id for d in claimed} == {new.id}

    async def test_senders_do_not_receive(self, store: Store) -> None:
        await sender(store)
        assert await publish_count(store, message("nobody listens")) == 0
        assert (await claim(store, T0)).deliveries == []

    async def test_a_receiver_starting_at_the_earliest_gets_what_nobody_took_in_order(
        self, store: Store
    ) -> None:
        for n in range(10):
            assert await publish_count(store, message(f"m{n}", at=T0)) == 0
        assert (await claim(store, T0 + 1)).deliveries == []
        await receiver(store, now=T0 + 5)  # start_at new: nothing old
        assert (await claim(store, T0 + 5)).deliveries == []
        reader = await receiver(store, now=T0 + 6, start_at=EARLIEST)
        claimed = await claim(store, T0 + 6)
        assert bodies(claimed) == [f"m{n}" for n in range(10)]
        assert {d.subscription_id for d in claimed.deliveries} == {reader.id}

    async def test_receivers_connecting_one_after_the_other_are_treated_the_same(
        self, store: Store
    ) -> None:
        await publish(store, "before both")
        await receiver(store, now=T0 + 1)
        await receiver(store, now=T0 + 2)
        assert (await claim(store, T0 + 3)).deliveries == []
        first = await receiver(store, now=T0 + 4, start_at=EARLIEST)
        second = await receiver(store, now=T0 + 5, start_at=EARLIEST)
        claimed = (await claim(store, T0 + 6)).deliveries
        assert sorted((d.subscription_id, d.body) for d in claimed) == sorted(
            [(first.id, "before both"), (second.id, "before both")]
        )

    async def test_topics_do_not_mix(self, store: Store) -> None:
        default_reader = await receiver(store, DEFAULT)
        assert await publish_count(store, message("for other", topic="other")) == 0
        assert await publish_count(store, message("for default", topic=DEFAULT)) == 1
        claimed = (await claim(store, T0)).deliveries
        assert [(d.body, d.subscription_id) for d in claimed] == [
            ("for default", default_reader.id)
        ]
        other_reader = await receiver(store, "other", now=T0 + 1, start_at=EARLIEST)
        claimed = (await claim(store, T0 + 1)).deliveries
        assert [(d.body, d.subscription_id) for d in claimed] == [("for other", other_reader.id)]

    async def test_message_published_after_the_last_receiver_left_is_done(
        self, store: Store
    ) -> None:
        gone = await receiver(store)
        await store.remove_connection(gone.id, T0 + 1)
        assert await publish_count(store, message("later", at=T0 + 2)) == 0
        assert (await store.stats()).queue_length == 0
        await receiver(store, now=T0 + 4)
        assert (await claim(store, T0 + 4)).deliveries == []
        back = await receiver(store, now=T0 + 5, start_at=T0 + 2)
        delivery = await claim_one(store, T0 + 5)
        assert (delivery.body, delivery.subscription_id) == ("later", back.id)

    # Claiming.

    async def test_claim_on_an_empty_store_finds_nothing(self, store: Store) -> None:
        await receiver(store)
        claimed = await claim(store, T0)
        assert claimed.deliveries == []
        assert claimed.next_due_at is None

    async def test_claim_returns_due_deliveries_oldest_first(self, store: Store) -> None:
        await receiver(store)
        for n, at in enumerate([T0 + 3, T0 + 1, T0 + 2, T0]):
            await publish(store, f"m{n}", at=at)
        assert bodies(await claim(store, T0 + 10)) == ["m3", "m1", "m2", "m0"]

    async def test_claimed_delivery_is_leased_until_the_lease_expires(self, store: Store) -> None:
        await receiver(store)
        await publish(store, "leased")
        first = await claim_one(store, T0)
        assert first.attempt == 1
        during = await claim(store, T0 + LEASE - 1)
        assert during.deliveries == []
        assert during.next_due_at == T0 + LEASE
        second = await claim_one(store, T0 + LEASE + 1)
        assert (second.delivery_id, second.message_id) == (first.delivery_id, first.message_id)
        assert second.attempt == 2
        assert second.lease != first.lease

    async def test_claim_respects_limit(self, store: Store) -> None:
        await receiver(store)
        for n in range(5):
            await publish(store, f"m{n}", at=T0 + n)
        claimed = await claim(store, T0 + 10, limit=2)
        assert bodies(claimed) == ["m0", "m1"]
        # More are due right now, so the caller should come back at once.
        assert claimed.next_due_at is not None
        assert claimed.next_due_at <= T0 + 10
        assert bodies(await claim(store, T0 + 10, limit=2)) == ["m2", "m3"]
        assert bodies(await claim(store, T0 + 10, limit=2)) == ["m4"]

    async def test_claim_respects_per_subscription_limit_and_busy(self, store: Store) -> None:
        slow = await receiver(store)
        fast = await receiver(store)
        for n in range(5):
            await publish(store, f"m{n}", at=T0 + n)
        claimed = await claim(
            store, T0 + 10, per_subscription_limit=3, busy={slow.id: 2, fast.id: 0}
        )
        per_receiver = [d.subscription_id for d in claimed.deliveries]
        assert per_receiver.count(slow.id) == 1
        assert per_receiver.count(fast.id) == 3
        # The oldest of each receiver's deliveries come first.
        assert [d.body for d in claimed.deliveries if d.subscription_id == slow.id] == ["m0"]
        assert [d.body for d in claimed.deliveries if d.subscription_id == fast.id] == [
            "m0",
            "m1",
            "m2",
        ]

    async def test_receiver_at_its_cap_gets_nothing_and_no_wake_up(self, store: Store) -> None:
        full = await receiver(store)
        await publish(store, "waits for room")
        claimed = await claim(store, T0 + 1, per_subscription_limit=2, busy={full.id: 2})
        assert claimed.deliveries == []
        # Only a finished delivery gives this receiver room again, so no due time is
        # reported for it (the caller would otherwise spin).
        assert claimed.next_due_at is None
        assert bodies(await claim(store, T0 + 1, per_subscription_limit=2, busy={full.id: 1})) == [
            "waits for room"
        ]

    async def test_next_due_at_is_the_earliest_future_due_time(self, store: Store) -> None:
        await receiver(store)
        await publish(store, "a")
        await publish(store, "b")
        a, b = (await claim(store, T0)).deliveries
        await store.retry(a, due_at=T0 + 8, error="HTTP 500", status=500)
        await store.retry(b, due_at=T0 + 5, error="HTTP 500", status=500)
        claimed = await claim(store, T0 + 1)
        assert claimed.deliveries == []
        assert claimed.next_due_at == T0 + 5

    async def test_a_claim_that_fills_a_receivers_room_still_names_the_next_due(
        self, store: Store
    ) -> None:
        await receiver(store)
        await publish(store, "now")
        await publish(store, "later", deliver_at=T0 + 30)
        # All that is due fits the receiver's room exactly: the next claim is for later.
        claimed = await claim(store, T0, per_subscription_limit=1)
        assert bodies(claimed) == ["now"]
        assert claimed.next_due_at == T0 + 30

    async def test_concurrent_claims_never_hand_out_a_delivery_twice(self, store: Store) -> None:
        await receiver(store)
        await receiver(store)
        for n in range(15):
            await publish(store, f"m{n}")
        claims = await asyncio.gather(*(claim(store, T0, limit=4) for _ in range(10)))
        ids = [d.delivery_id for c in claims for d in c.deliveries]
        assert len(ids) == 30
        assert len(set(ids)) == 30

    # Acknowledging.

    async def test_ack_completes_the_delivery(self, store: Store) -> None:
        await receiver(store)
        await publish(store, "done")
        delivery = await claim_one(store, T0)
        await store.ack(delivery)
        claimed = await claim(store, T0 + LEASE + 1)
        assert claimed.deliveries == []
        assert claimed.next_due_at is None
        stats = await store.stats()
        assert (stats.completed, stats.queue_length) == (1, 0)

    async def test_ack_twice_counts_once(self, store: Store) -> None:
        await receiver(store)
        await publish(store, "done")
        delivery = await claim_one(store, T0)
        await store.ack(delivery)
        await store.ack(delivery)
        assert (await store.stats()).completed == 1

    async def test_outcomes_under_a_lost_lease_change_nothing(self, store: Store) -> None:
        await receiver(store)
        await publish(store, "contested")
        stale = await claim_one(store, T0)
        current = await claim_one(store, T0 + LEASE + 1)
        await store.ack(stale)
        await store.retry(stale, due_at=T0 + LEASE + 2, error="late", status=500)
        await store.dead_letter(stale, now=T0 + LEASE + 2, error="late", status=500)
        await store.release([stale], T0 + LEASE + 2)
        stats = await store.stats()
        assert (stats.completed, stats.queue_length) == (0, 1)
        assert await all_dead_letters(store) == []
        # The current holder still holds it, and its outcome is the one that counts.
        assert (await claim(store, T0 + LEASE + 3)).deliveries == []
        await store.ack(current)
        assert (await store.stats()).completed == 1

    async def test_outcomes_arriving_together_are_each_recorded(self, store: Store) -> None:
        # A store may record outcomes that arrive at once together; each must still
        # count as if it came alone, whatever else shares its batch.
        await receiver(store)
        await receiver(store)
        for n in range(60):
            await publish(store, f"m{n}")
        (stale,) = (await claim(store, T0, limit=1)).deliveries
        rest = (await claim(store, T0 + 1, limit=1000)).deliveries
        assert len(rest) == 119
        retried, dead, *acked = sorted(rest, key=lambda d: d.delivery_id)
        taken_over = await claim_one(store, T0 + LEASE + 0.5)  # only stale's lease ran out
        assert taken_over.delivery_id == stale.delivery_id
        now = T0 + 2
        await asyncio.gather(
            store.ack(stale, now=now, status=200),
            store.retry(retried, due_at=T0 + LEASE + 50, error="HTTP 503", status=503),
            store.dead_letter(dead, now=now, error="HTTP 500", status=500),
            *(store.ack(d, now=now, status=200) for d in acked),
            *(store.ack(d, now=now, status=200) for d in acked[:5]),  # acked twice
        )
        stats = await store.stats()
        assert stats.completed == len(acked)
        assert stats.queue_length == 2, "pending: the taken-over and the retried delivery"
        letters = await all_dead_letters(store)
        assert [(d.message_id, d.last_error) for d in letters] == [(dead.message_id, "HTTP 500")]
        # The delivery taken over is its new holder's to settle, and the retry is due.
        await store.ack(taken_over, now=now)
        assert (await store.stats()).completed == len(acked) + 1
        again = await claim(store, T0 + LEASE + 50, limit=1000)
        assert [d.delivery_id for d in again.deliveries] == [retried.delivery_id]

    # Retrying.

    async def test_retry_reschedules_and_gives_up_the_lease(self, store: Store) -> None:
        await receiver(store)
        await publish(store, "flaky")
        first = await claim_one(store, T0)
        # Due again before the lease would have run out: the retry ends the lease.
        await store.retry(first, due_at=T0 + 10, error="HTTP 503", status=503)
        too_early = await claim(store, T0 + 9)
        assert too_early.deliveries == []
        assert too_early.next_due_at == T0 + 10
        second = await claim_one(store, T0 + 10)
        assert (second.message_id, second.attempt) == (first.message_id, 2)
        assert (await store.stats()).queue_length == 1

    # Dead letters and redrive.

    async def test_dead_letter_keeps_what_an_operator_needs(self, store: Store) -> None:
        reader = await receiver(store)
        new = await publish(store, "poison")
        first = await claim_one(store, T0)
        await store.retry(first, due_at=T0 + 1, error="HTTP 500", status=500)
        second = await claim_one(store, T0 + 1)
        await store.dead_letter(second, now=T0 + 2, error="HTTP 410", status=410)
        (dead,) = await all_dead_letters(store)
        assert dead.message_id == new.id
        assert dead.receiver_id == reader.id
        assert dead.attempts == 2
        assert dead.last_error == "HTTP 410"
        assert dead.dead_at == T0 + 2
        assert dead.body == "poison"
        assert (await claim(store, T0 + LEASE + 10)).deliveries == []
        stats = await store.stats()
        assert (stats.queue_length, stats.completed) == (0, 0)

    async def test_dead_letters_are_listed_oldest_first_up_to_the_limit(self, store: Store) -> None:
        await receiver(store)
        for n in range(3):
            await publish(store, f"m{n}")
        deliveries = (await claim(store, T0)).deliveries
        for delivery, dead_at in zip(deliveries, [T0 + 3, T0 + 1, T0 + 2], strict=True):
            await store.dead_letter(delivery, now=dead_at, error="gone", status=None)
        assert [d.body for d in await all_dead_letters(store)] == ["m1", "m2", "m0"]
        first_page = await store.dead_letters(limit=2)
        assert [d.body for d in first_page.items] == ["m1", "m2"]
        assert first_page.next_cursor is not None

    async def test_redrive_all_queues_them_again_from_attempt_one(self, store: Store) -> None:
        await receiver(store)
        await receiver(store)
        await publish(store, "again")
        await dead_letter_everything(store, T0)
        assert len(await all_dead_letters(store)) == 2
        assert await store.redrive(T0 + 100) == 2
        assert await all_dead_letters(store) == []
        assert await store.redrive(T0 + 100) == 0
        claimed = (await claim(store, T0 + 100)).deliveries
        assert [(d.body, d.attempt) for d in claimed] == [("again", 1), ("again", 1)]
        assert (await store.stats()).queue_length == 2

    async def test_redrive_of_one_receiver_leaves_the_others(self, store: Store) -> None:
        chosen = await receiver(store)
        other = await receiver(store)
        await publish(store, "m0")
        await publish(store, "m1")
        await dead_letter_everything(store, T0)
        assert await store.redrive(T0 + 100, receiver_id=chosen.id) == 2
        assert {d.receiver_id for d in await all_dead_letters(store)} == {other.id}
        claimed = (await claim(store, T0 + 100)).deliveries
        assert sorted((d.body, d.subscription_id, d.attempt) for d in claimed) == [
            ("m0", chosen.id, 1),
            ("m1", chosen.id, 1),
        ]

    async def test_disconnect_drops_the_receivers_dead_letters(self, store: Store) -> None:
        gone = await receiver(store)
        staying = await receiver(store)
        await publish(store, "orphan")
        await dead_letter_everything(store, T0)
        await store.remove_connection(gone.id, T0 + 1)
        # Nothing could ever redrive them, so they go with the receiver.
        assert [d.receiver_id for d in await all_dead_letters(store)] == [staying.id]
        assert await store.redrive(T0 + 2, receiver_id=gone.id) == 0
        assert await store.redrive(T0 + 2) == 1
        assert [d.subscription_id for d in (await claim(store, T0 + 2)).deliveries] == [staying.id]

    # Releasing.

    async def test_release_makes_deliveries_due_at_once_with_the_attempt_undone(
        self, store: Store
    ) -> None:
        await receiver(store)
        await publish(store, "m0")
        await publish(store, "m1")
        first = (await claim(store, T0)).deliveries
        assert [d.attempt for d in first] == [1, 1]
        await store.release(first[:1], T0 + 1)
        again = await claim(store, T0 + 1)
        assert [(d.body, d.attempt) for d in again.deliveries] == [("m0", 1)]

    async def test_release_of_attempted_deliveries_keeps_their_attempt(self, store: Store) -> None:
        # In flight at shutdown: the receiver may have had it, so it was an attempt.
        await receiver(store)
        await publish(store, "m0")
        (first,) = (await claim(store, T0)).deliveries
        await store.release([first], T0 + 1, attempted=True)
        again = await claim_one(store, T0 + 1)
        assert (again.body, again.attempt) == ("m0", 2)

    # Disconnecting receivers.

    async def test_removing_a_receiver_drops_only_its_pending_deliveries(
        self, store: Store
    ) -> None:
        leaving = await receiver(store)
        staying = await receiver(store)
        for n in range(3):
            await publish(store, f"m{n}")
        await store.remove_connection(leaving.id, T0 + 1)
        claimed = (await claim(store, T0 + 1)).deliveries
        assert [(d.body, d.subscription_id) for d in claimed] == [
            ("m0", staying.id),
            ("m1", staying.id),
            ("m2", staying.id),
        ]
        assert (await store.stats()).queue_length == 3

    async def test_a_removed_receivers_claimed_delivery_does_not_come_back(
        self, store: Store
    ) -> None:
        leaving = await receiver(store)
        await publish(store, "in flight")
        await claim_one(store, T0)
        await store.remove_connection(leaving.id, T0 + 1)
        assert (await claim(store, T0 + LEASE + 1)).deliveries == []
        assert (await store.stats()).queue_length == 0

    # Figures.

    async def test_stats_count_connections_queue_and_completed(self, store: Store) -> None:
        stats = await store.stats()
        assert (stats.receivers, stats.senders, stats.queue_length, stats.completed) == (
            0,
            0,
            0,
            0,
        )
        await receiver(store)
        await receiver(store)
        gone = await receiver(store)
        await sender(store)
        await store.remove_connection(gone.id, T0)
        await publish(store, "m0")
        await publish(store, "m1")
        await publish(store, "nobody takes it", topic="nobody")  # done: not queued
        stats = await store.stats()
        assert (stats.receivers, stats.senders, stats.queue_length) == (2, 1, 4)
        claimed = (await claim(store, T0)).deliveries
        # Claimed but not yet delivered is still in the queue.
        assert (await store.stats()).queue_length == 4
        await store.ack(claimed[0])
        stats = await store.stats()
        assert (stats.queue_length, stats.completed) == (3, 1)

    async def test_topic_backlogs_count_undelivered_messages_and_the_oldest(
        self, store: Store
    ) -> None:
        assert await store.topic_backlogs() == []
        first = await receiver(store, "orders")
        await receiver(store, "orders")
        for n in (1, 2, 3):
            await publish(store, f"o{n}", topic="orders", at=T0 + n)
        await publish(store, "nobody takes it", topic="nobody", at=T0 + 5)  # done
        assert await store.topic_backlogs() == [TopicBacklog("orders", 3, T0 + 1)]
        claimed = {
            (d.body, d.subscription_id == first.id): d
            for d in (await claim(store, T0 + 9)).deliveries
        }
        # Claimed is not delivered: the backlog is unchanged.
        assert [b.messages for b in await store.topic_backlogs()] == [3]
        await store.ack(claimed["o1", True])
        await store.ack(claimed["o1", False])
        await store.ack(claimed["o2", True])
        await store.dead_letter(claimed["o2", False], now=T0 + 9, error="HTTP 500", status=500)
        await store.ack(claimed["o3", True])
        # o1 is done, o2 waits only as a dead letter, o3 still waits for one receiver.
        assert await store.topic_backlogs() == [TopicBacklog("orders", 1, T0 + 3)]
        await receiver(store, "nobody", now=T0 + 10, start_at=EARLIEST)
        assert await store.topic_backlogs() == [
            TopicBacklog("nobody", 1, T0 + 5),
            TopicBacklog("orders", 1, T0 + 3),
        ]
        await store.ack(claimed["o3", False])
        await store.ack(await claim_one(store, T0 + 10))
        assert await store.topic_backlogs() == []

    async def test_dead_letter_count_follows_dead_letters_and_redrive(self, store: Store) -> None:
        assert await store.dead_letter_count() == 0
        chosen = await receiver(store)
        await receiver(store)
        await publish(store, "m0")
        await publish(store, "m1")
        await dead_letter_everything(store, T0)
        assert await store.dead_letter_count() == 4
        await store.redrive(T0 + 1, receiver_id=chosen.id)
        assert await store.dead_letter_count() == 2
        await store.remove_connection(chosen.id, T0 + 2)
        assert await store.dead_letter_count() == 2

    async def test_ping_answers_while_open_and_fails_once_closed(self, store: Store) -> None:
        await store.ping()
        await store.close()
        with pytest.raises(StoreUnavailable):
            await store.ping()

    # Concurrency.

    async def test_concurrent_publishes_all_succeed(self, store: Store) -> None:
        await receiver(store)
        messages = [message(f"m{n}") for n in range(200)]
        counts = await asyncio.gather(*(publish_count(store, m) for m in messages))
        assert counts == [1] * 200
        claimed = (await claim(store, T0, limit=1000, per_subscription_limit=1000)).deliveries
        assert sorted(d.message_id for d in claimed) == sorted(m.id for m in messages)
        assert (await store.stats()).queue_length == 200

    # Durability.

    async def test_state_survives_a_restart(self, store: Store, reopen: Reopen) -> None:
        reader = await receiver(store)
        writer = await sender(store)
        await publish(store, "acked")
        await publish(store, "dead")
        await publish(store, "retried")
        await publish(store, "pending", at=T0 + 1)
        waiting = await publish(store, "waiting", topic="later")
        acked, dead, retried = (await claim(store, T0)).deliveries
        await store.ack(acked)
        await store.dead_letter(dead, now=T0 + 1, error="HTTP 500", status=500)
        await store.retry(retried, due_at=T0 + 100, error="HTTP 503", status=503)
        before = await store.stats()

        store = await reopen(store)

        assert sorted(await store.connections(), key=lambda c: c.id) == sorted(
            [reader, writer], key=lambda c: c.id
        )
        assert await store.stats() == before
        assert [(d.body, d.attempts) for d in await all_dead_letters(store)] == [("dead", 1)]
        assert bodies(await claim(store, T0 + 99)) == ["pending"]
        later = await claim_one(store, T0 + 100)
        assert (later.body, later.attempt) == ("retried", 2)
        await receiver(store, "later", now=T0 + 101, start_at=EARLIEST)
        assert [d.message_id for d in (await claim(store, T0 + 101)).deliveries] == [waiting.id]

    async def test_a_lease_outlives_a_restart_no_longer_than_it_lasts(
        self, store: Store, reopen: Reopen
    ) -> None:
        await receiver(store)
        await publish(store, "in flight")
        first = await claim_one(store, T0)
        store = await reopen(store)
        again = await claim_one(store, T0 + LEASE + 1)
        assert (again.message_id, again.attempt) == (first.message_id, 2)
