"""Claiming due deliveries under a lease, for ungrouped subscriptions and groups.

A delivery is claimable when it is pending, due, its target has room, and no older
pending delivery of the same target shares its ordering key: so one key goes out one
message at a time, in publish order, and a failing head holds up only its own key.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping

from mqpy.domain import Claim
from mqpy.ids import new_lease_token
from mqpy.store.claiming import CLAIM_COLUMNS as _COLUMNS
from mqpy.store.claiming import ClaimBuilder
from mqpy.store.routes import Routes

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
_DUE_FOR_SUBSCRIPTION = (
    f"SELECT {_COLUMNS} FROM {_FROM} WHERE d.subscription_id = ? AND d.group_id IS NULL "
    f"AND d.state = 'pending' AND d.due_at <= ? AND {_HEAD_OF_SUBSCRIPTION} "
    "ORDER BY d.due_at, d.id LIMIT ?"
)
_DUE_FOR_GROUP = (
    f"SELECT {_COLUMNS} FROM {_FROM} WHERE d.group_id = ? AND d.state = 'pending' "
    f"AND d.due_at <= ? AND {_HEAD_OF_GROUP} ORDER BY d.due_at, d.id LIMIT ?"
)
_NEXT_FOR_SUBSCRIPTION = (
    "SELECT MIN(due_at) FROM deliveries WHERE subscription_id = ? AND group_id IS NULL "
    "AND state = 'pending' AND due_at > ?"
)
_NEXT_FOR_GROUP = (
    "SELECT MIN(due_at) FROM deliveries WHERE group_id = ? AND state = 'pending' AND due_at > ?"
)


def claim(
    conn: sqlite3.Connection,
    routes: Routes,
    *,
    limit: int,
    now: float,
    lease_seconds: float,
    per_subscription_limit: int,
    busy: Mapping[int, int],
) -> Claim:
    lease = new_lease_token()
    builder = ClaimBuilder(
        routes,
        limit=limit,
        now=now,
        lease=lease,
        per_subscription_limit=per_subscription_limit,
        busy=busy,
    )
    for member, take in builder.subscription_takes():
        rows = conn.execute(_DUE_FOR_SUBSCRIPTION, (member.id, now, take + 1)).fetchall()
        # The one row beyond what we take tells whether more are due right now.
        if len(rows) > take:
            builder.consider(now)
        else:
            builder.consider(conn.execute(_NEXT_FOR_SUBSCRIPTION, (member.id, now)).fetchone()[0])
        builder.add_subscription_rows(member, rows[:take])
    for group_id, total in builder.group_takes():
        rows = conn.execute(_DUE_FOR_GROUP, (group_id, now, total + 1)).fetchall()
        if len(rows) > total:
            builder.consider(now)
        else:
            builder.consider(conn.execute(_NEXT_FOR_GROUP, (group_id, now)).fetchone()[0])
        builder.add_group_rows(group_id, rows[:total])
    claimed = builder.finish()
    conn.executemany(
        "UPDATE deliveries SET attempts = attempts + 1, due_at = ?, lease = ?, "
        "subscription_id = ? WHERE id = ?",
        [
            (now + lease_seconds, lease, d.subscription_id, d.delivery_id)
            for d in claimed.deliveries
        ],
    )
    return claimed
