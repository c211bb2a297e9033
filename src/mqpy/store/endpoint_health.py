"""Endpoint health in the store: since when every attempt to a push subscription failed.

The broker disables a push subscription whose attempts have all failed for its
disable-after (delivery/endpoint_health.py judges that); it needs, per subscription,
the time of the first failure since the last success: `failing_since`. Settlements are
the hot path, so that time is written only when it changes (a first failure after a
success, a first success after failures), never per attempt: each batch of settlements
runs one statement, which matches each of its subscriptions' row by primary key and
changes a row only at such a turn. Both SQL stores share the logic here.

Attempts of `mq.events` messages do not count (events.py: no event causes another),
and pull subscriptions are left alone (the statement names push ones): a consumer's
nack says nothing about an endpoint.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mqpy.model.domain import NewMessage
from mqpy.model.events import EVENTS_TOPIC, DeadLettered, delivery_dead_lettered, event_messages
from mqpy.store.batching import Settlement
from mqpy.store.routes import Routes, Target
from mqpy.store.rows import chunks


@dataclass(frozen=True, slots=True)
class Turn:
    """What one batch says of one subscription: its latest success (if any) and its
    first failure after that (if any); both are the attempts' send times."""

    subscription_id: int
    succeeded_at: float | None
    failing_since: float | None


def turns(settlements: Sequence[Settlement]) -> list[Turn]:
    """One Turn per subscription the batch settled for, by id (the order in which a
    database locks their rows)."""
    successes: dict[int, float] = {}
    failures: dict[int, list[float]] = {}
    for s in settlements:
        if s.delivery.topic == EVENTS_TOPIC:
            continue
        sid = s.delivery.subscription_id
        if s.due_at is None and not s.dead:
            successes[sid] = max(successes.get(sid, s.attempted_at), s.attempted_at)
        else:
            failures.setdefault(sid, []).append(s.attempted_at)
    found = []
    for sid in sorted(successes.keys() | failures.keys()):
        succeeded = successes.get(sid)
        after = [at for at in failures.get(sid, ()) if succeeded is None or at > succeeded]
        found.append(Turn(sid, succeeded, min(after) if after else None))
    return found


# The statement's condition, on both stores: a success ends a stored run of failures
# that began no later than it (another node's failure after it stays), and a failure
# starts a run where none is stored.
_CHANGES = (
    "s.kind = 'push' AND ((s.failing_since <= {succeeded} AND s.failing_since {differs} "
    "{since}) OR ({since} IS NOT NULL AND s.failing_since IS NULL))"
)


_SQLITE = (
    "UPDATE subscriptions AS s SET failing_since = v.column3 FROM (VALUES {values}) AS v "
    "WHERE s.id = v.column1 AND "
    + _CHANGES.format(succeeded="v.column2", since="v.column3", differs="IS NOT")
)


def record_sqlite(conn: sqlite3.Connection, settlements: Sequence[Settlement]) -> None:
    """The SQLite statement, for a batch of settlements (one, but for hundreds of
    subscriptions in one batch)."""
    for chunk in chunks(turns(settlements), 300):  # 3 parameters each
        values = ", ".join(["(?, ?, ?)"] * len(chunk))
        params = [v for t in chunk for v in (t.subscription_id, t.succeeded_at, t.failing_since)]
        conn.execute(_SQLITE.format(values=values), params)


# On PostgreSQL, data-modifying CTEs that go before the settlement's statement that
# records the attempts (its parameters $1 to $9), so they cost no round trip of their
# own. Successes only look at runs stored (the partial index of failing ones, nearly
# always empty), failures only at their own subscriptions: a batch of successes to
# healthy receivers reads no subscription row. A row is changed by one of the two at
# most: one needs a run stored, the other none.
POSTGRES_CTE = (
    "WITH ended AS (UPDATE subscriptions s SET failing_since = u.since "
    "FROM unnest($10::bigint[], $11::float8[], $12::float8[]) AS u (id, succeeded, since) "
    "WHERE s.failing_since IS NOT NULL AND s.active AND s.id = u.id AND "
    "s.kind = 'push' AND s.failing_since <= u.succeeded AND "
    "s.failing_since IS DISTINCT FROM u.since), "
    "started AS (UPDATE subscriptions s SET failing_since = u.since "
    "FROM unnest($13::bigint[], $14::float8[]) AS u (id, since) "
    "WHERE s.id = ANY($13::bigint[]) AND s.id = u.id AND s.kind = 'push' "
    "AND s.failing_since IS NULL)"
)


def postgres_parameters(found: Sequence[Turn]) -> list[list[object]]:
    """POSTGRES_CTE's arrays: the turns with a success, then those with a failure."""
    ended = [t for t in found if t.succeeded_at is not None]
    started = [t for t in found if t.failing_since is not None]
    return [
        [t.subscription_id for t in ended],
        [t.succeeded_at for t in ended],
        [t.failing_since for t in ended],
        [t.subscription_id for t in started],
        [t.failing_since for t in started],
    ]


def dead_letter_events(routes: Routes, settlements: Sequence[Settlement]) -> list[dict[str, Any]]:
    """The `delivery.dead_lettered` events of these dead letters."""
    return [
        delivery_dead_lettered(
            DeadLettered(
                subscription_id=s.delivery.subscription_id,
                message_id=s.delivery.message_id,
                topic=s.delivery.topic,
                attempts=s.delivery.attempt,
                error=s.error,
                status=s.status,
                group=_group_of(routes, s.delivery.subscription_id),
            ),
            s.at,
        )
        for s in settlements
    ]


# What a store reads of each delivery expiry dead-lettered (expiry.py), for its event.
Expired = tuple[int, str, str, int]  # subscription id, message id, its topic, attempts


def expiry_events(
    routes: Routes, expired: Sequence[Expired], error: str, at: float
) -> list[dict[str, Any]]:
    """The `delivery.dead_lettered` events of deliveries that expired unattempted."""
    return [
        delivery_dead_lettered(
            DeadLettered(sid, message_id, topic, attempts, error, None, _group_of(routes, sid)),
            at,
        )
        for sid, message_id, topic, attempts in expired
    ]


def _group_of(routes: Routes, subscription_id: int) -> str | None:
    member = routes.members.get(subscription_id)
    return (
        None
        if member is None or member.group_id is None
        else routes.group_names.get(member.group_id)
    )


def routed_events(
    routes: Routes, events: Sequence[dict[str, Any]], at: float
) -> list[tuple[NewMessage, list[Target]]]:
    """The messages of `events` that some subscription takes, with their targets. An
    event nobody subscribes to is not kept: unlike other messages, it does not wait for
    a first subscriber."""
    return [
        (message, targets)
        for message in event_messages(events, at)
        if (targets := routes.for_message(message.topic, message.attributes))
    ]
