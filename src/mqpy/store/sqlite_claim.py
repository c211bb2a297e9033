"""Claiming due deliveries under a lease, for ungrouped subscriptions and groups.

A delivery is claimable when it is pending, due, its target has room, and no older
pending delivery of the same target shares its ordering key: so one key goes out one
message at a time, in publish order, and a failing head holds up only its own key.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Mapping
from typing import Any

from mqpy.model.domain import Claim, ClaimedDelivery
from mqpy.model.ids import new_lease_token
from mqpy.store.claiming import CLAIM_COLUMNS as _COLUMNS
from mqpy.store.claiming import ClaimBuilder, leased_deliveries
from mqpy.store.routes import Member, Routes
from mqpy.store.rows import chunks

_FROM = "deliveries d JOIN messages m ON m.seq = d.message_seq"
# Blocked by an older unfinished delivery of the key, or by any of the key's that is in
# flight (a redriven head is older than the one it must wait for).
_HEAD_OF_SUBSCRIPTION = (
    "(d.ordering_key IS NULL OR NOT EXISTS (SELECT 1 FROM deliveries e "
    "WHERE e.ordering_key = d.ordering_key AND e.state = 'pending' AND e.id != d.id "
    "AND (e.id < d.id OR e.lease IS NOT NULL) "
    "AND e.group_id IS NULL AND e.subscription_id = d.subscription_id))"
)
_HEAD_OF_GROUP = (
    "(d.ordering_key IS NULL OR NOT EXISTS (SELECT 1 FROM deliveries e "
    "WHERE e.ordering_key = d.ordering_key AND e.state = 'pending' AND e.id != d.id "
    "AND (e.id < d.id OR e.lease IS NOT NULL) AND e.group_id = d.group_id))"
)
# What is due, narrowly: ids and due times only. Only the chosen are read in full
# (`_READ`), so a claim across many receivers does not read every receiver's bodies
# to hand out a few of them.
_DUE_FOR_SUBSCRIPTION = (
    "SELECT d.id, d.due_at FROM deliveries d WHERE d.subscription_id = ? "
    f"AND d.group_id IS NULL AND d.state = 'pending' AND d.due_at <= ? "
    f"AND {_HEAD_OF_SUBSCRIPTION} ORDER BY d.due_at, d.id LIMIT ?"
)
_DUE_FOR_GROUP = (
    "SELECT d.id, d.due_at FROM deliveries d WHERE d.group_id = ? AND d.state = 'pending' "
    f"AND d.due_at <= ? AND {_HEAD_OF_GROUP} ORDER BY d.due_at, d.id LIMIT ?"
)
_NEXT_FOR_SUBSCRIPTION = (
    "SELECT MIN(due_at) FROM deliveries WHERE subscription_id = ? AND group_id IS NULL "
    "AND state = 'pending' AND due_at > ?"
)
_NEXT_FOR_GROUP = (
    "SELECT MIN(due_at) FROM deliveries WHERE group_id = ? AND state = 'pending' AND due_at > ?"
)
# Deliveries under a live lease (held by any process of a group), for subscriptions
# with their own max_concurrency; each reads its partial index like the queries above.
_LEASED_UNGROUPED = (
    "SELECT subscription_id, COUNT(*) FROM deliveries WHERE subscription_id IN ({marks}) "
    "AND group_id IS NULL AND state = 'pending' AND due_at > ? AND lease IS NOT NULL "
    "GROUP BY subscription_id"
)
_LEASED_GROUPED = (
    "SELECT subscription_id, COUNT(*) FROM deliveries WHERE group_id IN ({groups}) "
    "AND state = 'pending' AND due_at > ? AND lease IS NOT NULL "
    "AND subscription_id IN ({marks}) GROUP BY subscription_id"
)
_QUERIES = {  # is a group: what is due, and when the next falls due
    False: (_DUE_FOR_SUBSCRIPTION, _NEXT_FOR_SUBSCRIPTION),
    True: (_DUE_FOR_GROUP, _NEXT_FOR_GROUP),
}


def claim(
    conn: sqlite3.Connection,
    routes: Routes,
    *,
    limit: int,
    now: float,
    lease_seconds: float,
    per_subscription_limit: int,
    busy: Mapping[int, int],
    for_subscription: int | None = None,
) -> Claim:
    builder = ClaimBuilder(
        routes,
        limit=limit,
        now=now,
        lease=new_lease_token(),
        per_subscription_limit=per_subscription_limit,
        busy=busy,
        for_subscription=for_subscription,
    )
    capped = builder.capped()
    if capped:
        builder.hold_to_cap(_leased(conn, capped, now))

    def due_of(is_group: bool, target: int, most: int) -> list[tuple[int, float]]:
        return conn.execute(_QUERIES[is_group][0], (target, now, most)).fetchall()

    def next_due_of(is_group: bool, target: int) -> float | None:
        next_due: float | None = conn.execute(_QUERIES[is_group][1], (target, now)).fetchone()[0]
        return next_due

    chosen = builder.choose(due_of, next_due_of)
    ids = list(chosen)
    assigned = dict(zip(ids, builder.assign(list(chosen.values())), strict=True))
    for chunk in chunks(ids):
        marks = ", ".join("?" * len(chunk))
        # Read before the lease counts the attempt: a row carries the attempts so far.
        for row in conn.execute(f"SELECT {_COLUMNS} FROM {_FROM} WHERE d.id IN ({marks})", chunk):
            builder.add_leased(assigned[row[0]], row)
    # One statement per chunk, not one per delivery: each statement gives up the GIL
    # and must win it back from the event loop (see sqlite_publish.py).
    for chunk in chunks(ids):
        values = ", ".join(["(?, ?)"] * len(chunk))
        conn.execute(
            "UPDATE deliveries SET attempts = attempts + 1, due_at = ?, lease = ?, "
            f"subscription_id = v.column2 FROM (VALUES {values}) AS v "
            "WHERE deliveries.id = v.column1",
            (now + lease_seconds, builder.lease, *(x for i in chunk for x in (i, assigned[i]))),
        )
    return builder.finish()


def _leased(conn: sqlite3.Connection, members: Collection[Member], now: float) -> dict[int, int]:
    """Per member, its deliveries under a live lease. A claim runs inside the write
    transaction, which the processes of a group take in turns, so no other process
    can lease between this count and this claim's leases."""
    counts: dict[int, int] = {}
    ungrouped = [m.id for m in members if m.group_id is None]
    if ungrouped:
        marks = ", ".join("?" * len(ungrouped))
        counts.update(conn.execute(_LEASED_UNGROUPED.format(marks=marks), (*ungrouped, now)))
    grouped = [m for m in members if m.group_id is not None]
    if grouped:
        group_ids = sorted({m.group_id for m in grouped if m.group_id is not None})
        query = _LEASED_GROUPED.format(
            groups=", ".join("?" * len(group_ids)), marks=", ".join("?" * len(grouped))
        )
        counts.update(conn.execute(query, (*group_ids, now, *(m.id for m in grouped))))
    return counts


def leased(
    conn: sqlite3.Connection,
    routes: Routes,
    subscription_id: int,
    leases: Collection[tuple[int, str]],
    now: float,
) -> list[ClaimedDelivery]:
    """What `Store.leased` answers, read in the writer's connection."""
    rows: list[tuple[Any, ...]] = []
    for chunk in chunks(sorted({delivery_id for delivery_id, _ in leases})):
        marks = ", ".join("?" * len(chunk))
        rows += conn.execute(
            f"SELECT {_COLUMNS}, d.lease FROM {_FROM} WHERE d.id IN ({marks}) "
            "AND d.subscription_id = ? AND d.state = 'pending' AND d.due_at > ?",
            (*chunk, subscription_id, now),
        ).fetchall()
    return leased_deliveries(routes, subscription_id, rows, leases)
