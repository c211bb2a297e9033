"""Claiming on PostgreSQL: choose due deliveries with a plain read, then lock only the
chosen ones (`FOR UPDATE SKIP LOCKED`), so a claim never holds rows it will not lease
and nodes claiming at once each get their share.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import asyncpg

from mqpy.store import postgres_sql as sql
from mqpy.store.claiming import ClaimBuilder
from mqpy.store.postgres_sql import PgConnection
from mqpy.store.routes import Routes


async def claim_rounds(
    conn: PgConnection, builder: ClaimBuilder, routes: Routes, *, limit: int, now: float
) -> bool:
    """Choose due deliveries, lock what no other node is taking, and hand those to the
    builder; choose again in place of any another node took meanwhile. Returns
    whether more were due than this claim could take."""
    # Chosen in an earlier round: taken by us (still 'pending' to our own reads until
    # the lease is written) or by another node. Never choose one again.
    chosen_before: list[int] = []
    while True:
        members = builder.subscription_takes()
        groups = builder.group_takes()
        left = limit - builder.taken
        if left <= 0 or not (members or groups):
            return left <= 0 and bool(members or groups)
        # One row beyond what a target takes tells whether more are due right now.
        rows = await conn.fetch(
            sql.DUE,
            [member.id for member, _ in members],
            [take + 1 for _, take in members],
            [group_id for group_id, _ in groups],
            [take + 1 for _, take in groups],
            now,
            chosen_before,
        )
        takes = {(False, m.id): take for m, take in members}
        takes.update({(True, g): take for g, take in groups})
        chosen, more_due_now = _oldest_due(rows, takes, left)
        if not chosen:
            return more_due_now
        locked = {row[0]: row for row in await conn.fetch(sql.LOCK_DUE, list(chosen), now)}
        chosen_before.extend(chosen)
        for delivery_id, (is_group, target) in chosen.items():
            row = locked.get(delivery_id)
            if row is None:
                continue  # another node took it meanwhile
            if is_group:
                builder.add_group_rows(target, [tuple(row)])
            else:
                builder.add_subscription_rows(routes.members[target], [tuple(row)])
        if len(locked) == len(chosen):
            return more_due_now


def _oldest_due(
    rows: Sequence[asyncpg.Record], takes: Mapping[tuple[bool, int], int], left: int
) -> tuple[dict[int, tuple[bool, int]], bool]:
    """The oldest due of `rows` (target id, is group, delivery id, due at), at most
    each target's take and `left` in all, in due order; and whether any were left
    over, that is, whether more are due right now than were chosen."""
    per_target: dict[tuple[bool, int], list[tuple[float, int]]] = {}
    for target, is_group, delivery_id, due_at in rows:
        per_target.setdefault((is_group, target), []).append((due_at, delivery_id))
    more = False
    candidates: list[tuple[float, int, tuple[bool, int]]] = []
    for target, found in per_target.items():
        found.sort()
        take = takes[target]
        more = more or len(found) > take
        candidates.extend((due_at, delivery_id, target) for due_at, delivery_id in found[:take])
    candidates.sort()
    more = more or len(candidates) > left
    return {delivery_id: target for _, delivery_id, target in candidates[:left]}, more
