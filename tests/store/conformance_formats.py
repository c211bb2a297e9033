"""Conformance: a push subscription's delivery format, as stored and as claimed."""

from __future__ import annotations

from mqpy.model.domain import DeliveryFormat, SubscriptionChanges, SubscriptionSpec
from mqpy.store.base import Store
from tests.store.support import DEFAULT, T0, Reopen, all_subscriptions, claim, publish, subscribe

BINARY = DeliveryFormat.CLOUDEVENTS_BINARY
STRUCTURED = DeliveryFormat.CLOUDEVENTS_STRUCTURED


async def formatted(store: Store, format: DeliveryFormat) -> int:
    spec = SubscriptionSpec(url="http://127.0.0.1:9/hook", topic=DEFAULT, format=format)
    return (await store.add_subscription(spec, T0, key_id=None, secret=None)).id


class FormatConformance:
    async def test_a_subscription_keeps_its_format(self, store: Store, reopen: Reopen) -> None:
        binary = await formatted(store, BINARY)
        structured = await formatted(store, STRUCTURED)
        plain = (await subscribe(store)).id
        store = await reopen(store)
        found = {s.id: s.spec.format for s in await all_subscriptions(store)}
        assert found == {binary: BINARY, structured: STRUCTURED, plain: DeliveryFormat.MQ}

    async def test_a_delivery_carries_its_subscriptions_format(self, store: Store) -> None:
        binary = await formatted(store, BINARY)
        plain = (await subscribe(store)).id
        await publish(store, "m")
        claimed = (await claim(store, T0)).deliveries
        assert {d.subscription_id: d.format for d in claimed} == {
            binary: BINARY,
            plain: DeliveryFormat.MQ,
        }

    async def test_an_update_changes_the_format_and_keeps_it_otherwise(
        self, store: Store, reopen: Reopen
    ) -> None:
        subscription = await formatted(store, BINARY)
        kept = await store.update_subscription(subscription, SubscriptionChanges(max_per_second=5))
        assert kept is not None and kept.spec.format is BINARY
        changed = await store.update_subscription(
            subscription, SubscriptionChanges(format=STRUCTURED)
        )
        assert changed is not None and changed.spec.format is STRUCTURED
        await publish(store, "after")
        assert [d.format for d in (await claim(store, T0)).deliveries] == [STRUCTURED]
        store = await reopen(store)
        assert (await store.subscription(subscription)).spec.format is STRUCTURED  # type: ignore[union-attr]
