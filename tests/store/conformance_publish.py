"""Conformance: batch publish, idempotent publish and the backlog limit."""

from __future__ import annotations

import asyncio

import pytest

from mqpy.model.domain import EARLIEST, Published
from mqpy.model.errors import BacklogFull
from mqpy.store.base import Store
from tests.store.support import (
    T0,
    ack_all,
    bodies,
    claim,
    claim_one,
    dead_letter_everything,
    message,
    publish,
    publish_count,
    subscribe,
)

DAY = 86_400.0


class PublishConformance:
    # Batches.

    async def test_a_batch_answers_in_order_with_each_messages_deliveries(
        self, store: Store
    ) -> None:
        await subscribe(store, "a")
        await subscribe(store, "a")
        batch = [message("two", topic="a"), message("none", topic="b"), message("two again", "a")]
        assert await store.publish(batch) == [
            Published(batch[0].id, deliveries=2),
            Published(batch[1].id, deliveries=0),
            Published(batch[2].id, deliveries=2),
        ]
        assert sorted(bodies(await claim(store, T0))) == ["two", "two", "two again", "two again"]

    async def test_an_empty_batch_does_nothing(self, store: Store) -> None:
        assert await store.publish([]) == []
        assert (await store.stats()).queue_length == 0

    async def test_a_full_backlog_refuses_the_whole_batch(self, store: Store) -> None:
        await subscribe(store)
        for n in range(3):
            await publish(store, f"m{n}")
        batch = [message("x", idempotency_key="x", publisher_key="k"), message("y")]
        with pytest.raises(BacklogFull):
            await store.publish(batch, max_backlog=3)
        # Nothing of the refused batch was kept: no message, no delivery, no key.
        assert await store.message(batch[0].id, T0) is None
        assert await store.message(batch[1].id, T0) is None
        assert (await store.stats()).queue_length == 3
        assert bodies(await claim(store, T0)) == ["m0", "m1", "m2"]
        retried = message("x", idempotency_key="x", publisher_key="k")
        assert await store.publish([retried], max_backlog=4) == [
            Published(retried.id, deliveries=1)
        ]

    async def test_the_backlog_limit_counts_until_a_message_is_done(self, store: Store) -> None:
        first = await subscribe(store)
        await subscribe(store)
        await publish(store, "m0")
        with pytest.raises(BacklogFull):
            await store.publish([message("over")], max_backlog=1)
        claimed = (await claim(store, T0)).deliveries
        # Delivered to one subscription of two: not done yet.
        await ack_all(store, [d for d in claimed if d.subscription_id == first.id], T0 + 1)
        with pytest.raises(BacklogFull):
            await store.publish([message("over")], max_backlog=1)
        await ack_all(store, [d for d in claimed if d.subscription_id != first.id], T0 + 2)
        # Done, though still kept for inspection: it no longer counts.
        assert await store.message(claimed[0].message_id, T0 + 2) is not None
        assert len(await store.publish([message("fits")], max_backlog=1)) == 1

    async def test_dead_letters_count_towards_the_backlog_until_purged(self, store: Store) -> None:
        await subscribe(store)
        await publish(store, "poison")
        await dead_letter_everything(store, T0)
        with pytest.raises(BacklogFull):
            await store.publish([message("over")], max_backlog=1)
        assert await store.purge_dead_letters(now=T0) == 1
        assert len(await store.publish([message("fits")], max_backlog=1)) == 1

    async def test_only_a_message_some_subscription_took_counts_towards_the_backlog(
        self, store: Store
    ) -> None:
        await publish(store, "nobody listens")
        assert len(await store.publish([message("fits")], max_backlog=1)) == 1
        await subscribe(store, now=T0 + 1)
        await publish(store, "taken", at=T0 + 1)
        with pytest.raises(BacklogFull):
            await store.publish([message("over")], max_backlog=1)

    # Idempotency.

    async def test_a_repeat_within_the_window_is_a_duplicate(self, store: Store) -> None:
        await subscribe(store)
        first = message("first", idempotency_key="order-1", publisher_key="key_a")
        assert await store.publish([first], dedup_since=T0 - DAY) == [
            Published(first.id, deliveries=1)
        ]
        repeat = message("repeat", at=T0 + 60, idempotency_key="order-1", publisher_key="key_a")
        assert await store.publish([repeat], dedup_since=T0 + 60 - DAY) == [
            Published(first.id, duplicate=True, deliveries=0)
        ]
        assert bodies(await claim(store, T0 + 60)) == ["first"]
        assert await store.message(repeat.id, T0 + 60) is None
        assert (await store.stats()).queue_length == 1

    async def test_a_repeat_older_than_the_window_is_a_new_message(self, store: Store) -> None:
        await subscribe(store)
        first = message("first", idempotency_key="order-1", publisher_key="key_a")
        await store.publish([first], dedup_since=T0 - DAY)
        later = message("later", at=T0 + DAY + 1, idempotency_key="order-1", publisher_key="key_a")
        assert await store.publish([later], dedup_since=T0 + 1) == [
            Published(later.id, deliveries=1)
        ]
        # The newer one is what repeats are now answered with.
        again = message("again", at=T0 + DAY + 2, idempotency_key="order-1", publisher_key="key_a")
        assert await store.publish([again], dedup_since=T0 + 1) == [
            Published(later.id, duplicate=True)
        ]
        assert bodies(await claim(store, T0 + DAY + 2)) == ["first", "later"]

    async def test_the_same_key_from_another_publisher_is_a_new_message(self, store: Store) -> None:
        await subscribe(store)
        mine = message("mine", idempotency_key="order-1", publisher_key="key_a")
        theirs = message("theirs", idempotency_key="order-1", publisher_key="key_b")
        assert await store.publish([mine], dedup_since=T0 - DAY) == [
            Published(mine.id, deliveries=1)
        ]
        assert await store.publish([theirs], dedup_since=T0 - DAY) == [
            Published(theirs.id, deliveries=1)
        ]
        other_key = message("other", idempotency_key="order-2", publisher_key="key_a")
        assert not (await store.publish([other_key], dedup_since=T0 - DAY))[0].duplicate
        unkeyed = [message("same"), message("same")]
        assert [p.duplicate for p in await store.publish(unkeyed)] == [False, False]
        assert bodies(await claim(store, T0)) == ["mine", "theirs", "other", "same", "same"]

    async def test_a_repeat_inside_one_batch_is_a_duplicate(self, store: Store) -> None:
        await subscribe(store)
        batch = [
            message("first", idempotency_key="k", publisher_key="key_a"),
            message("plain"),
            message("repeat", idempotency_key="k", publisher_key="key_a"),
        ]
        assert await store.publish(batch, dedup_since=T0 - DAY) == [
            Published(batch[0].id, deliveries=1),
            Published(batch[1].id, deliveries=1),
            Published(batch[0].id, duplicate=True),
        ]
        assert bodies(await claim(store, T0)) == ["first", "plain"]

    async def test_repeats_arriving_together_are_one_message(self, store: Store) -> None:
        # A store may write publishes that arrive at once together: a key repeated
        # among them is still one message, whichever of them the store takes first.
        await subscribe(store)
        repeats = [message(f"try {n}", idempotency_key="k1", publisher_key="p") for n in range(8)]
        answers = await asyncio.gather(*(store.publish([m]) for m in repeats))
        fresh = [a for (a,) in answers if not a.duplicate]
        assert len(fresh) == 1 and fresh[0].deliveries == 1
        assert {a.id for (a,) in answers} == {fresh[0].id}
        assert len((await claim(store, T0)).deliveries) == 1

    async def test_publishes_and_a_new_subscription_arriving_together(self, store: Store) -> None:
        # Messages published beside the creation of a subscription starting at the
        # earliest either reach it as deliveries or are replayed to it: each once.
        for rounds in range(3):
            topic = f"t{rounds}"
            batch = [message(f"{topic}-m{n}", topic=topic) for n in range(20)]
            await asyncio.gather(
                *(store.publish([m]) for m in batch[:10]),
                subscribe(store, topic, start_at=EARLIEST),
                *(store.publish([m]) for m in batch[10:]),
            )
            claimed = await claim(store, T0 + 1, limit=100)
            assert sorted(bodies(claimed)) == sorted(m.body for m in batch)
            await ack_all(store, claimed.deliveries, T0 + 1)
        assert (await store.stats()).queue_length == 0

    async def test_a_duplicate_answers_the_first_id_after_it_was_delivered(
        self, store: Store
    ) -> None:
        await subscribe(store)
        first = message("first", idempotency_key="k", publisher_key="key_a")
        await store.publish([first], dedup_since=T0 - DAY)
        await store.ack(await claim_one(store, T0), now=T0 + 1, status=200)
        repeat = message("repeat", at=T0 + 2, idempotency_key="k", publisher_key="key_a")
        assert await store.publish([repeat], dedup_since=T0 - DAY) == [
            Published(first.id, duplicate=True)
        ]
        assert (await claim(store, T0 + 2)).deliveries == []

    async def test_sweep_forgets_old_idempotency_keys(self, store: Store) -> None:
        first = message("first", idempotency_key="k", publisher_key="key_a")
        await store.publish([first], dedup_since=0.0)
        await store.sweep(delivered_before=0.0, dedup_before=T0)
        repeat = message("repeat", at=T0 + 1, idempotency_key="k", publisher_key="key_a")
        assert (await store.publish([repeat], dedup_since=0.0))[0].duplicate
        await store.sweep(delivered_before=0.0, dedup_before=T0 + 1)
        again = message("again", at=T0 + 2, idempotency_key="k", publisher_key="key_a")
        assert await store.publish([again], dedup_since=0.0) == [Published(again.id)]
        assert await publish_count(store, message("unrelated")) == 0
