"""Connections, subscriptions and groups on PostgreSQL: the helpers of the store's
catalog operations. Every caller holds the catalog lock (`PostgresStore._catalog_change`),
so no other node changes the catalog or publishes meanwhile.
"""

from __future__ import annotations

import asyncpg

from mqpy.domain import Conflict, Connection, Mode, Subscription, SubscriptionSpec
from mqpy.filters import matches as filter_matches
from mqpy.ids import new_connection_id
from mqpy.store.postgres_sql import PgConnection, one
from mqpy.store.routes import Target
from mqpy.store.rows import (
    SUBSCRIPTION_COLUMNS,
    SUBSCRIPTIONS_FROM,
    dump_filter,
    dump_settings,
    load_attributes,
    subscription_from_row,
)
from mqpy.topics import is_pattern
from mqpy.topics import matches as topic_matches

CONNECTION_COLUMNS = "id, mode, client_url, topic, connected_at, key_id"


async def new_id(conn: PgConnection) -> int:
    """A random id no connection or subscription ever had: a primary key on every id
    handed out settles a race between nodes."""
    while True:
        candidate = new_connection_id()
        issued = await conn.fetchval(
            "INSERT INTO issued_ids (id) VALUES ($1) ON CONFLICT DO NOTHING RETURNING id",
            candidate,
        )
        if issued is not None:
            return candidate


async def insert_subscription(
    conn: PgConnection,
    subscription_id: int,
    spec: SubscriptionSpec,
    now: float,
    key_id: str | None,
    secret: str | None,
    connection_id: int | None,
) -> None:
    group_id = None
    new_target = True
    if spec.group is not None:
        group_id, new_target = await _join_group(conn, spec, now)
    await conn.execute(
        "INSERT INTO subscriptions (id, topic, url, created_at, secret, group_id, filter, "
        "settings, key_id, connection_id, kind) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        subscription_id,
        spec.topic,
        spec.url,
        now,
        secret,
        group_id,
        dump_filter(spec.filter),
        dump_settings(spec),
        key_id,
        connection_id,
        spec.kind.value,
    )
    if not is_pattern(spec.topic):
        await conn.execute(
            "INSERT INTO topics (name, first_seen) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            spec.topic,
            now,
        )
    if new_target:
        target = Target(
            spec.topic, spec.filter, None if group_id is not None else subscription_id, group_id
        )
        await _route_waiting_messages(conn, target, now)


async def _join_group(conn: PgConnection, spec: SubscriptionSpec, now: float) -> tuple[int, bool]:
    """The active group this member joins (created if new), and whether it is new.
    The caller holds the catalog lock, so no other node creates it meanwhile."""
    row = await conn.fetchrow(
        "SELECT id, filter FROM groups WHERE topic = $1 AND name = $2 AND active",
        spec.topic,
        spec.group,
    )
    wanted = dump_filter(spec.filter)
    if row is None:
        group_id = await conn.fetchval(
            "INSERT INTO groups (topic, name, filter, created_at) VALUES ($1, $2, $3, $4) "
            "RETURNING id",
            spec.topic,
            spec.group,
            wanted,
            now,
        )
        return int(group_id), True
    if row["filter"] != wanted:
        raise Conflict(
            f"the group {spec.group!r} on {spec.topic!r} has the filter "
            f"{row['filter'] or 'none'}; its members must all carry the same filter"
        )
    return int(row["id"]), False


async def change_group_filter(
    conn: PgConnection, subscription_id: int, spec: SubscriptionSpec
) -> None:
    group_id, members = await one(
        conn,
        "SELECT s.group_id, (SELECT count(*) FROM subscriptions o WHERE o.group_id = "
        "s.group_id AND o.active) FROM subscriptions s WHERE s.id = $1",
        subscription_id,
    )
    if members > 1:
        raise Conflict(
            f"subscription {subscription_id} shares the group {spec.group!r} with "
            f"{members - 1} other member(s); a group's members must all carry the same "
            "filter, so change it on a new group"
        )
    await conn.execute(
        "UPDATE groups SET filter = $1 WHERE id = $2", dump_filter(spec.filter), group_id
    )


async def fetch_subscription(conn: PgConnection, subscription_id: int) -> Subscription | None:
    row = await conn.fetchrow(
        f"SELECT {SUBSCRIPTION_COLUMNS} FROM {SUBSCRIPTIONS_FROM} WHERE s.id = $1 AND s.active",
        subscription_id,
    )
    return None if row is None else subscription_from_row(row)


async def _route_waiting_messages(conn: PgConnection, target: Target, now: float) -> None:
    """Messages published while nothing matched them go to the first target that does.
    The caller holds the catalog lock, so no publish commits meanwhile."""
    if target.filter is None and not is_pattern(target.pattern):
        await conn.execute(
            "WITH routed AS (UPDATE messages SET routed = true WHERE topic = $3 AND NOT routed "
            "RETURNING seq, ordering_key, deliver_at) "
            "INSERT INTO deliveries (message_seq, subscription_id, group_id, ordering_key, "
            "state, due_at) SELECT seq, $1, $2, ordering_key, 'pending', "
            "greatest($4, coalesce(deliver_at, 0)) FROM routed ORDER BY seq",
            target.subscription_id,
            target.group_id,
            target.pattern,
            now,
        )
        return
    rows = await conn.fetch(
        "SELECT seq, topic, attributes, ordering_key, deliver_at FROM messages "
        "WHERE NOT routed ORDER BY seq"
    )
    routed = [
        row
        for row in rows
        if topic_matches(target.pattern, row["topic"])
        and filter_matches(target.filter, load_attributes(row["attributes"]))
    ]
    if not routed:
        return
    await conn.execute(
        "INSERT INTO deliveries (message_seq, subscription_id, group_id, ordering_key, state, "
        "due_at) SELECT seq, $1, $2, key, 'pending', due FROM unnest($3::bigint[], $4::text[], "
        "$5::float8[]) WITH ORDINALITY AS r (seq, key, due, n) ORDER BY n",
        target.subscription_id,
        target.group_id,
        [row["seq"] for row in routed],
        [row["ordering_key"] for row in routed],
        [max(now, row["deliver_at"] or 0.0) for row in routed],
    )
    await conn.execute(
        "UPDATE messages SET routed = true WHERE seq = ANY($1::bigint[])",
        [row["seq"] for row in routed],
    )


def connection_from_row(row: asyncpg.Record) -> Connection:
    connection_id, mode, client_url, topic, connected_at, key_id = row
    return Connection(connection_id, Mode(mode), client_url, topic, connected_at, key_id)
