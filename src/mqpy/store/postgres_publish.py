"""A publish transaction on PostgreSQL: the rows a batch of publishes writes, gathered
into one statement, and the idempotency keys they take.

Concurrent publishes on one node share the transaction (group commit); each node's
transactions take the ordering keys they write under a lock, so one key's messages
get their sequence numbers in commit order on every node.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from mqpy.model.domain import NewMessage, Published
from mqpy.store import postgres_sql as sql
from mqpy.store.claim_offers import PublishedDeliveries
from mqpy.store.postgres_schema import DUE_CHANNEL, TALLY_SLOTS
from mqpy.store.postgres_sql import PgConnection
from mqpy.store.routes import Routes
from mqpy.store.rows import dump_attributes


@dataclass(frozen=True, slots=True)
class PublishRequest:
    messages: Sequence[NewMessage]
    max_backlog: int
    dedup_since: float


class PublishPlan:
    """The rows one publish transaction writes, gathered for one statement."""

    def __init__(self, routes: Routes) -> None:
        self._routes = routes
        self._messages: list[NewMessage] = []
        # Each message's done_at: at once for one that no subscription takes.
        self._done_at: list[float | None] = []
        self._deliveries: list[tuple[str, int | None, int | None, str | None, float]] = []
        self._topics: dict[str, tuple[int, float]] = {}  # name: (count, first seen)
        # Idempotency keys an earlier transaction holds, and those this one takes.
        self.held: dict[tuple[str, str], str] = {}
        self._taken: dict[tuple[str, str], str] = {}
        # What the transaction makes due, for a claim made inside it (`Store.offer_claim`).
        self.made = PublishedDeliveries()

    def add(self, message: NewMessage) -> Published:
        key = _idempotency_of(message)
        if key is not None:
            holder = self.held.get(key) or self._taken.get(key)
            if holder is not None:
                return Published(holder, duplicate=True)
            self._taken[key] = message.id
        targets = self._routes.for_message(message.topic, message.attributes)
        self._messages.append(message)
        self._done_at.append(None if targets else message.published_at)
        due = max(message.published_at, message.deliver_at or 0.0)
        self._deliveries.extend(
            (message.id, t.subscription_id, t.group_id, message.ordering_key, due) for t in targets
        )
        self.made.add(message.id, len(targets), due_now=due <= message.published_at)
        count, first = self._topics.get(message.topic, (0, message.published_at))
        self._topics[message.topic] = (count + 1, min(first, message.published_at))
        return Published(message.id, deliveries=len(targets))

    async def write(self, conn: PgConnection, *, wake: bool = True) -> None:
        """Write the rows; `wake`: tell every node that deliveries are due (NOTIFY), if
        the transaction makes any."""
        if not self._messages:
            return
        keys = sorted({_lock_key(m.ordering_key) for m in self._messages if m.ordering_key})
        if keys:
            await conn.execute(sql.LOCK_ORDERING_KEYS, keys)
        messages = self._messages
        deliveries = self._deliveries
        await conn.execute(
            sql.PUBLISH,
            [m.id for m in messages],
            [m.topic for m in messages],
            [m.body for m in messages],
            [m.publisher_id for m in messages],
            [m.published_at for m in messages],
            self._done_at,
            [dump_attributes(m.attributes) for m in messages],
            [m.ordering_key for m in messages],
            [m.deliver_at for m in messages],
            [d[0] for d in deliveries],
            [d[1] for d in deliveries],
            [d[2] for d in deliveries],
            [d[3] for d in deliveries],
            [d[4] for d in deliveries],
            list(self._topics),
            [first for _, first in self._topics.values()],
            secrets.randbelow(TALLY_SLOTS),
            [count for count, _ in self._topics.values()],
            sum(1 for done_at in self._done_at if done_at is None),  # left to deliver
            DUE_CHANNEL,
            wake and bool(deliveries),
        )


def _idempotency_of(message: NewMessage) -> tuple[str, str] | None:
    if message.idempotency_key is None:
        return None
    return (message.publisher_key or "", message.idempotency_key)


async def held_idempotency_keys(
    conn: PgConnection, requests: Sequence[PublishRequest]
) -> dict[tuple[str, str], str]:
    """Take the idempotency keys these messages carry (the first message with a key
    takes it); returns the keys that an earlier transaction holds, with its message."""
    first: dict[tuple[str, str], NewMessage] = {}
    since = float("inf")
    for request in requests:
        for message in request.messages:
            key = _idempotency_of(message)
            if key is not None and key not in first:
                first[key] = message
                # Every request carries the same --dedup-window in practice; the
                # widest asked for wins.
                since = min(since, request.dedup_since)
    if not first:
        return {}
    ours = {
        (row[0], row[1])
        for row in await conn.fetch(
            sql.CLAIM_IDEMPOTENCY_KEYS,
            [k[0] for k in first],
            [k[1] for k in first],
            [m.id for m in first.values()],
            [m.published_at for m in first.values()],
            since,
        )
    }
    taken = [k for k in first if k not in ours]
    if not taken:
        return {}
    rows = await conn.fetch(sql.HELD_IDEMPOTENCY_KEYS, [k[0] for k in taken], [k[1] for k in taken])
    return {(row[0], row[1]): row[2] for row in rows}


def _lock_key(ordering_key: str) -> int:
    """A stable signed 64-bit number for an ordering key (a collision only makes two
    keys wait for each other)."""
    digest = hashlib.blake2b(ordering_key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)
