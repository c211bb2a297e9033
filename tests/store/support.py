"""Helpers for the store conformance suite: they go through the `Store` interface only."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Mapping

from mqpy.model.domain import (
    Claim,
    ClaimedDelivery,
    Connection,
    DeadLetter,
    Filter,
    Mode,
    NewMessage,
    RetryOverrides,
    StartAt,
    Subscription,
    SubscriptionSpec,
    TopicInfo,
)
from mqpy.store.base import Store

Reopen = Callable[[Store], Awaitable[Store]]

T0 = 1_700_000_000.0
LEASE = 30.0
DEFAULT = "default"

_urls = itertools.count(1)


def new_url() -> str:
    return f"http://127.0.0.1:9/r{next(_urls)}"


async def receiver(
    store: Store, topic: str = DEFAULT, now: float = T0, *, start_at: StartAt = None
) -> Connection:
    return await store.add_connection(Mode.RECEIVE, new_url(), topic, now, start_at=start_at)


async def sender(store: Store, now: float = T0) -> Connection:
    return await store.add_connection(Mode.SEND, "", DEFAULT, now)


async def subscribe(
    store: Store,
    topic: str = DEFAULT,
    *,
    group: str | None = None,
    filter: Filter | None = None,
    now: float = T0,
    retry: RetryOverrides | None = None,
    max_concurrency: int | None = None,
    max_per_second: float | None = None,
    secret: str | None = None,
    key_id: str | None = None,
    paused: bool = False,
    start_at: StartAt = None,
) -> Subscription:
    spec = SubscriptionSpec(
        url=new_url(),
        topic=topic,
        group=group,
        filter=filter,
        retry=retry or RetryOverrides(),
        max_concurrency=max_concurrency,
        max_per_second=max_per_second,
    )
    return await store.add_subscription(
        spec, now, key_id=key_id, secret=secret, paused=paused, start_at=start_at
    )


_message_numbers = itertools.count(1)


def message(
    body: str,
    topic: str = DEFAULT,
    at: float = T0,
    *,
    attributes: Mapping[str, str] | None = None,
    ordering_key: str | None = None,
    deliver_at: float | None = None,
    idempotency_key: str | None = None,
    publisher_key: str | None = None,
) -> NewMessage:
    return NewMessage(
        id=f"msg_test_{next(_message_numbers):08d}",
        topic=topic,
        body=body,
        published_at=at,
        publisher_id=None,
        attributes=dict(attributes or {}),
        ordering_key=ordering_key,
        deliver_at=deliver_at,
        idempotency_key=idempotency_key,
        publisher_key=publisher_key,
    )


async def publish_count(store: Store, new: NewMessage) -> int:
    """Publish one message; how many deliveries it got."""
    (published,) = await store.publish([new])
    assert published.id == new.id
    assert not published.duplicate
    return published.deliveries


async def publish(
    store: Store,
    body: str,
    topic: str = DEFAULT,
    at: float = T0,
    *,
    attributes: Mapping[str, str] | None = None,
    ordering_key: str | None = None,
    deliver_at: float | None = None,
) -> NewMessage:
    new = message(
        body,
        topic,
        at,
        attributes=attributes,
        ordering_key=ordering_key,
        deliver_at=deliver_at,
    )
    await publish_count(store, new)
    return new


async def claim(
    store: Store,
    now: float,
    *,
    limit: int = 100,
    per_subscription_limit: int = 100,
    busy: Mapping[int, int] | None = None,
) -> Claim:
    return await store.claim(
        limit=limit,
        now=now,
        lease_seconds=LEASE,
        per_subscription_limit=per_subscription_limit,
        busy=busy or {},
    )


async def claim_one(store: Store, now: float) -> ClaimedDelivery:
    deliveries = (await claim(store, now)).deliveries
    assert len(deliveries) == 1, deliveries
    return deliveries[0]


async def ack_all(store: Store, deliveries: list[ClaimedDelivery], now: float) -> None:
    for delivery in deliveries:
        await store.ack(delivery, now=now, status=200)


async def dead_letter_everything(store: Store, now: float) -> None:
    for delivery in (await claim(store, now)).deliveries:
        await store.dead_letter(delivery, now=now, error="HTTP 500", status=500)


async def all_dead_letters(
    store: Store, subscription_id: int | None = None, page_size: int = 100
) -> list[DeadLetter]:
    """Every dead letter, following the cursor page by page."""
    letters: list[DeadLetter] = []
    cursor: str | None = None
    while True:
        page = await store.dead_letters(
            subscription_id=subscription_id, cursor=cursor, limit=page_size
        )
        letters.extend(page.items)
        if page.next_cursor is None:
            return letters
        assert len(page.items) == page_size
        cursor = page.next_cursor


async def all_subscriptions(
    store: Store, topic: str | None = None, page_size: int = 100
) -> list[Subscription]:
    found: list[Subscription] = []
    cursor: str | None = None
    while True:
        page = await store.subscriptions(topic=topic, cursor=cursor, limit=page_size)
        found.extend(page.items)
        if page.next_cursor is None:
            return found
        assert len(page.items) == page_size
        cursor = page.next_cursor


async def all_topics(store: Store, page_size: int = 100) -> list[TopicInfo]:
    found: list[TopicInfo] = []
    cursor: str | None = None
    while True:
        page = await store.topics(cursor=cursor, limit=page_size)
        found.extend(page.items)
        if page.next_cursor is None:
            return found
        assert len(page.items) == page_size
        cursor = page.next_cursor


def bodies(claimed: Claim) -> list[str]:
    return [d.body for d in claimed.deliveries]


def by_subscription(deliveries: list[ClaimedDelivery]) -> dict[int, list[str]]:
    """Bodies each subscription was handed, in claim order."""
    found: dict[int, list[str]] = {}
    for delivery in deliveries:
        found.setdefault(delivery.subscription_id, []).append(delivery.body)
    return found
