"""Connections, subscriptions and groups on PostgreSQL: the helpers of the store's
catalog operations. Every caller holds the catalog lock (`PostgresStore._catalog_change`),
so no other node changes the catalog or publishes meanwhile.
"""

from __future__ import annotations

import asyncpg

from mqpy.model.domain import Connection, Mode, StartAt, Subscription, SubscriptionSpec
from mqpy.model.ids import new_connection_id
from mqpy.model.topics import is_pattern
from mqpy.store.postgres_replay import start
from mqpy.store.postgres_schema import SWEEP_LOCK
from mqpy.store.postgres_sql import PgConnection, one
from mqpy.store.routes import Target
from mqpy.store.rows import (
    SUBSCRIPTION_COLUMNS,
    SUBSCRIPTIONS_FROM,
    dump_filter,
    group_filter_conflict,
    shared_filter_conflict,
    subscription_from_row,
)
from mqpy.store.subscription_rows import NEW_SUBSCRIPTION_COLUMNS, new_subscription_values

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
    start_at: StartAt = None,
) -> None:
    """Insert a subscription (the caller holds the catalog lock) and, from `start_at`,
    replay its topic's retained messages to it; a member joining a group that exists
    takes the group's place instead."""
    group_id = None
    new_target = True
    if spec.group is not None:
        group_id, new_target = await _join_group(conn, spec, now)
    await conn.execute(
        f"INSERT INTO subscriptions ({NEW_SUBSCRIPTION_COLUMNS}) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        *new_subscription_values(
            subscription_id,
            spec,
            now,
            secret=secret,
            group_id=group_id,
            key_id=key_id,
            connection_id=connection_id,
        ),
    )
    if not is_pattern(spec.topic):
        await conn.execute(
            "INSERT INTO topics (name, first_seen) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            spec.topic,
            now,
        )
    if new_target and start_at is not None:
        target = Target(
            spec.topic, spec.filter, None if group_id is not None else subscription_id, group_id
        )
        # No message this reads is swept meanwhile (see postgres_replay.py).
        await conn.execute("SELECT pg_advisory_xact_lock($1)", SWEEP_LOCK)
        await start(conn, target, start_at, now)


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
        raise group_filter_conflict(spec, row["filter"])
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
        raise shared_filter_conflict(subscription_id, spec.group, members)
    await conn.execute(
        "UPDATE groups SET filter = $1 WHERE id = $2", dump_filter(spec.filter), group_id
    )


async def fetch_subscription(conn: PgConnection, subscription_id: int) -> Subscription | None:
    row = await conn.fetchrow(
        f"SELECT {SUBSCRIPTION_COLUMNS} FROM {SUBSCRIPTIONS_FROM} WHERE s.id = $1 AND s.active",
        subscription_id,
    )
    return None if row is None else subscription_from_row(row)


def connection_from_row(row: asyncpg.Record) -> Connection:
    connection_id, mode, client_url, topic, connected_at, key_id = row
    return Connection(connection_id, Mode(mode), client_url, topic, connected_at, key_id)
