"""Conformance: which subscriptions a message goes to, by topic pattern and by filter."""

from __future__ import annotations

from mqpy.model.domain import EARLIEST, Filter
from mqpy.store.base import Store
from tests.store.support import (
    T0,
    by_subscription,
    claim,
    message,
    publish,
    publish_count,
    subscribe,
)

# One subscription per kind of filter condition, and one combining two.
FILTERS: dict[str, Filter] = {
    "equal": {"region": "eu"},
    "any_of": {"region": ["eu", "us"]},
    "prefix": {"sku": {"prefix": "ab"}},
    "exists": {"vip": {"exists": True}},
    "absent": {"vip": {"exists": False}},
    "combined": {"region": "eu", "vip": {"exists": True}},
}

# Attributes of each message, and which of the filters above it passes.
CASES: list[tuple[dict[str, str], set[str]]] = [
    ({}, {"absent"}),
    ({"region": "eu"}, {"equal", "any_of", "absent"}),
    ({"region": "us"}, {"any_of", "absent"}),
    ({"region": "EU"}, {"absent"}),
    ({"region": "eu", "vip": "1"}, {"equal", "any_of", "exists", "combined"}),
    ({"region": "asia", "vip": ""}, {"exists"}),
    ({"sku": "abc"}, {"prefix", "absent"}),
    ({"sku": "xab"}, {"absent"}),
    ({"sku": "ab", "region": "us", "vip": "y"}, {"prefix", "any_of", "exists"}),
]


class RoutingConformance:
    # Topic patterns.

    async def test_pattern_subscriptions_get_the_topics_they_name(self, store: Store) -> None:
        one = await subscribe(store, "orders.*")
        deep = await subscribe(store, "orders.>")
        exact = await subscribe(store, "orders.eu")
        assert await publish_count(store, message("eu", topic="orders.eu")) == 3
        assert await publish_count(store, message("north", topic="orders.eu.north")) == 1
        assert await publish_count(store, message("bare", topic="orders")) == 0
        assert await publish_count(store, message("other", topic="shipping.eu")) == 0
        assert await publish_count(store, message("prefix", topic="ordersx.eu")) == 0
        got = by_subscription((await claim(store, T0)).deliveries)
        assert got == {one.id: ["eu"], deep.id: ["eu", "north"], exact.id: ["eu"]}

    async def test_start_at_replays_to_each_pattern_what_it_matches(self, store: Store) -> None:
        for topic in ["orders.eu", "orders.eu.north", "shipping.eu", "orders"]:
            assert await publish_count(store, message(topic, topic=topic)) == 0
        one = await subscribe(store, "orders.*", now=T0 + 1, start_at=EARLIEST)
        deep = await subscribe(store, "orders.>", now=T0 + 2, start_at=EARLIEST)
        everything = await subscribe(store, ">", now=T0 + 3, start_at=EARLIEST)
        got = by_subscription((await claim(store, T0 + 3)).deliveries)
        # Nobody took them when published: each subscription starting at the earliest
        # gets every one it matches, whoever came first.
        assert got == {
            one.id: ["orders.eu"],
            deep.id: ["orders.eu", "orders.eu.north"],
            everything.id: ["orders.eu", "orders.eu.north", "shipping.eu", "orders"],
        }

    async def test_a_pattern_subscriber_does_not_replay_unmatched_messages(
        self, store: Store
    ) -> None:
        await publish(store, "waits", topic="orders")
        await subscribe(store, "orders.*", now=T0 + 1, start_at=EARLIEST)
        assert (await claim(store, T0 + 1)).deliveries == []
        exact = await subscribe(store, "orders", now=T0 + 2, start_at=EARLIEST)
        assert by_subscription((await claim(store, T0 + 2)).deliveries) == {exact.id: ["waits"]}

    # Filters.

    async def test_each_filter_condition_at_publish(self, store: Store) -> None:
        names = {
            (await subscribe(store, "filtered", filter=filter_)).id: name
            for name, filter_ in FILTERS.items()
        }
        expected: dict[str, list[str]] = {name: [] for name in FILTERS}
        for number, (attributes, passes) in enumerate(CASES):
            new = message(f"m{number}", topic="filtered", attributes=attributes)
            assert await publish_count(store, new) == len(passes), attributes
            for name in sorted(passes):
                expected[name].append(f"m{number}")
        got = by_subscription((await claim(store, T0, limit=1000)).deliveries)
        assert {names[sid]: found for sid, found in got.items()} == {
            name: found for name, found in expected.items() if found
        }

    async def test_each_filter_condition_when_replaying_retained_messages(
        self, store: Store
    ) -> None:
        for name, filter_ in FILTERS.items():
            retained = [
                message(f"{name}{n}", topic=name, attributes=a) for n, (a, _) in enumerate(CASES)
            ]
            for new in retained:
                assert await publish_count(store, new) == 0
            subscription = await subscribe(
                store, name, filter=filter_, now=T0 + 1, start_at=EARLIEST
            )
            wanted = [f"{name}{n}" for n, (_, passes) in enumerate(CASES) if name in passes]
            got = by_subscription((await claim(store, T0 + 1, limit=1000)).deliveries)
            assert got == {subscription.id: wanted}, name

    async def test_a_filter_does_not_change_other_subscriptions(self, store: Store) -> None:
        picky = await subscribe(store, filter={"region": "eu"})
        everything = await subscribe(store)
        await publish(store, "eu", attributes={"region": "eu"})
        await publish(store, "us", attributes={"region": "us"})
        await publish(store, "none")
        got = by_subscription((await claim(store, T0)).deliveries)
        assert got == {picky.id: ["eu"], everything.id: ["eu", "us", "none"]}

    async def test_a_message_no_filter_passes_is_done_and_replayable(self, store: Store) -> None:
        await subscribe(store, filter={"region": "eu"})
        assert await publish_count(store, message("us", attributes={"region": "us"})) == 0
        assert (await claim(store, T0)).deliveries == []
        assert (await store.stats()).queue_length == 0
        await subscribe(store, filter={"region": "us"}, now=T0 + 1)
        assert (await claim(store, T0 + 1)).deliveries == []
        replayed = await subscribe(store, filter={"region": "us"}, now=T0 + 2, start_at=EARLIEST)
        assert by_subscription((await claim(store, T0 + 2)).deliveries) == {replayed.id: ["us"]}
