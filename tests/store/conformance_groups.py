"""Conformance: consumer groups share a topic's messages among their members."""

from __future__ import annotations

import pytest

from mqpy.model.domain import Mode
from mqpy.model.errors import Conflict
from mqpy.store.base import Store
from tests.store.support import (
    LEASE,
    T0,
    all_subscriptions,
    by_subscription,
    claim,
    claim_one,
    message,
    new_url,
    publish,
    publish_count,
    subscribe,
)


class GroupConformance:
    async def test_a_group_gets_each_message_once_spread_across_members(self, store: Store) -> None:
        first = await subscribe(store, group="workers")
        second = await subscribe(store, group="workers")
        sent = [message(f"m{n}") for n in range(10)]
        for new in sent:
            assert await publish_count(store, new) == 1
        claimed = (await claim(store, T0)).deliveries
        assert sorted(d.message_id for d in claimed) == sorted(m.id for m in sent)
        got = by_subscription(claimed)
        assert set(got) == {first.id, second.id}
        # Spread: both members get a share, not one of them everything.
        assert all(len(share) >= 3 for share in got.values()), got

    async def test_a_group_and_an_ungrouped_subscription_each_get_every_message(
        self, store: Store
    ) -> None:
        members = {(await subscribe(store, group="g")).id for _ in range(2)}
        other_group = await subscribe(store, group="other")
        alone = await subscribe(store)
        for n in range(4):
            assert await publish_count(store, message(f"m{n}")) == 3
        got = by_subscription((await claim(store, T0)).deliveries)
        assert got[alone.id] == ["m0", "m1", "m2", "m3"]
        assert got[other_group.id] == ["m0", "m1", "m2", "m3"]
        assert sorted(b for sid in members for b in got.get(sid, [])) == ["m0", "m1", "m2", "m3"]

    async def test_the_same_group_name_on_another_topic_is_another_group(
        self, store: Store
    ) -> None:
        on_a = await subscribe(store, "a", group="g")
        on_b = await subscribe(store, "b", group="g", filter={"x": "1"})
        await publish(store, "for a", topic="a")
        await publish(store, "for b", topic="b", attributes={"x": "1"})
        got = by_subscription((await claim(store, T0)).deliveries)
        assert got == {on_a.id: ["for a"], on_b.id: ["for b"]}

    async def test_a_retried_group_delivery_can_go_to_another_member(self, store: Store) -> None:
        members = [await subscribe(store, group="g") for _ in range(2)]
        await publish(store, "flaky")
        first = await claim_one(store, T0)
        await store.retry(first, due_at=T0 + 5, error="HTTP 503", status=503)
        # The member that failed is busy now; the other one takes the retry.
        full = {first.subscription_id: 100}
        second = (await claim(store, T0 + 5, busy=full)).deliveries
        (other,) = {m.id for m in members} - {first.subscription_id}
        assert [(d.message_id, d.subscription_id, d.attempt) for d in second] == [
            (first.message_id, other, 2)
        ]

    async def test_removing_a_member_leaves_the_groups_deliveries_to_the_others(
        self, store: Store
    ) -> None:
        leaving = await subscribe(store, group="g")
        staying = await subscribe(store, group="g")
        for n in range(4):
            await publish(store, f"m{n}")
        held = (await claim(store, T0, limit=2)).deliveries
        assert {d.subscription_id for d in held} == {leaving.id, staying.id}
        assert await store.remove_subscription(leaving.id, T0 + 1) is not None
        # Long before the leaving member's lease would run out.
        again = (await claim(store, T0 + 1)).deliveries
        assert {d.subscription_id for d in again} == {staying.id}
        expected = {f"m{n}" for n in range(4)} - {
            d.body for d in held if d.subscription_id == staying.id
        }
        assert sorted(d.body for d in again) == sorted(expected)
        assert (await store.stats()).queue_length == 4

    async def test_a_removed_members_outcome_no_longer_counts(self, store: Store) -> None:
        leaving = await subscribe(store, group="g")
        staying = await subscribe(store, group="g")
        await publish(store, "held")
        mine = await claim(store, T0, busy={staying.id: 100})
        assert [d.subscription_id for d in mine.deliveries] == [leaving.id]
        await store.remove_subscription(leaving.id, T0 + 1)
        await store.ack(mine.deliveries[0], now=T0 + 2, status=200)
        assert (await store.stats()).completed == 0
        # The remaining member still has it to deliver.
        retaken = await claim_one(store, T0 + 2)
        assert (retaken.message_id, retaken.subscription_id) == (
            mine.deliveries[0].message_id,
            staying.id,
        )

    async def test_removing_the_last_member_drops_the_groups_deliveries(self, store: Store) -> None:
        first = await subscribe(store, group="g")
        second = await subscribe(store, group="g")
        for n in range(3):
            await publish(store, f"m{n}")
        await claim(store, T0, limit=1)
        await store.remove_subscription(first.id, T0 + 1)
        await store.remove_subscription(second.id, T0 + 2)
        assert (await claim(store, T0 + LEASE + 1)).deliveries == []
        assert (await store.stats()).queue_length == 0
        assert await store.topic_backlogs() == []
        # Dropped means done: they no longer count towards the backlog limit.
        assert len(await store.publish([message("fits")], max_backlog=1)) == 1
        # A new member starts a new group; what the old one dropped stays dropped.
        newcomer = await subscribe(store, group="g", now=T0 + 3)
        await publish(store, "after", at=T0 + 4)
        assert by_subscription((await claim(store, T0 + LEASE + 1)).deliveries) == {
            newcomer.id: ["after"]
        }

    async def test_a_member_with_another_filter_is_refused(self, store: Store) -> None:
        await subscribe(store, group="g", filter={"region": "eu"})
        with pytest.raises(Conflict):
            await subscribe(store, group="g", filter={"region": "us"})
        with pytest.raises(Conflict):
            await subscribe(store, group="g")
        with pytest.raises(Conflict):
            await store.add_connection(
                Mode.RECEIVE, new_url(), "default", T0, group="g", filter={"region": ["eu"]}
            )
        # Nothing of the refused ones was kept.
        assert len(await all_subscriptions(store)) == 1
        assert await store.connections() == []
        same = await subscribe(store, group="g", filter={"region": "eu"})
        assert same.spec.group == "g"
        unfiltered = await subscribe(store, group="plain")
        with pytest.raises(Conflict):
            await subscribe(store, group="plain", filter={"region": "eu"})
        assert unfiltered.spec.filter is None

    async def test_a_receiver_connection_can_join_a_group(self, store: Store) -> None:
        joined = await store.add_connection(
            Mode.RECEIVE, new_url(), "default", T0, group="g", filter={"region": "eu"}
        )
        member = await subscribe(store, group="g", filter={"region": "eu"})
        for n in range(6):
            await publish(store, f"m{n}", attributes={"region": "eu"})
        await publish(store, "filtered out", attributes={"region": "us"})
        got = by_subscription((await claim(store, T0)).deliveries)
        assert set(got) == {joined.id, member.id}
        assert sorted(b for share in got.values() for b in share) == [f"m{n}" for n in range(6)]
        subscription = await store.subscription(joined.id)
        assert subscription is not None
        assert (subscription.spec.group, subscription.connection_id) == ("g", joined.id)

    async def test_busy_and_paused_members_get_none(self, store: Store) -> None:
        busy = await subscribe(store, group="g")
        paused = await subscribe(store, group="g")
        free = await subscribe(store, group="g")
        await store.set_paused(paused.id, True)
        for n in range(6):
            await publish(store, f"m{n}")
        claimed = await claim(store, T0, per_subscription_limit=4, busy={busy.id: 4})
        assert by_subscription(claimed.deliveries) == {free.id: ["m0", "m1", "m2", "m3"]}
        # With every member busy or paused, nothing is handed out.
        rest = await claim(store, T0, per_subscription_limit=4, busy={busy.id: 4, free.id: 4})
        assert rest.deliveries == []
        await store.set_paused(paused.id, False)
        rest = await claim(store, T0, per_subscription_limit=4, busy={busy.id: 4, free.id: 4})
        assert by_subscription(rest.deliveries) == {paused.id: ["m4", "m5"]}
