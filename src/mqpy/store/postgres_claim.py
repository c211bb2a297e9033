"""Claiming on PostgreSQL: choose due deliveries with a plain read, then lock and lease
only the chosen ones (`FOR UPDATE SKIP LOCKED`, in the same statement), so a claim
never holds rows it will not lease and nodes claiming at once each get their share.
"""

from __future__ import annotations

from dataclasses import dataclass

from mqpy.store import postgres_sql as sql
from mqpy.store.claiming import ClaimBuilder, oldest_due
from mqpy.store.postgres_sql import PgConnection


@dataclass(frozen=True, slots=True)
class Lease:
    """What a claim's leases say: until when, the token, and the node holding them."""

    until: float
    token: str
    node: str


async def claim_rounds(
    conn: PgConnection, builder: ClaimBuilder, lease: Lease, *, limit: int, now: float
) -> None:
    """Choose due deliveries, lease what no other node is taking, and hand those to
    the builder; choose again in place of any another node took meanwhile. Tells the
    builder when the next delivery falls due (now, if more are due than it took)."""
    capped = builder.capped()
    if capped:
        await conn.execute(sql.LOCK_CAPPED, [member.id for member in capped])
        grouped = [member for member in capped if member.group_id is not None]
        leased = await conn.fetch(
            sql.LIVE_LEASES,
            [member.id for member in capped if member.group_id is None],
            [member.id for member in grouped],
            sorted({m.group_id for m in grouped if m.group_id is not None}),
            now,
        )
        builder.hold_to_cap({row[0]: row[1] for row in leased})
    # Chosen in an earlier round: taken by us or by another node. Never choose one
    # again (our own leases are not visible to our reads until this transaction ends).
    chosen_before: list[int] = []
    first = True
    while True:
        members = builder.subscription_takes()
        groups = builder.group_takes()
        left = limit - builder.taken
        if left <= 0 or not (members or groups):
            if left <= 0 and (members or groups):
                builder.consider(now)
            return
        # One row beyond what a target takes tells whether more are due right now.
        rows = await conn.fetch(
            sql.DUE,
            [member.id for member, _ in members],
            [take + 1 for _, take in members],
            [group_id for group_id, _ in groups],
            [take + 1 for _, take in groups],
            now,
            chosen_before,
            first,
        )
        if first:
            # The one row with no target: when the next delivery falls due after now.
            builder.consider(next(row[3] for row in rows if row[0] is None))
            rows = [row for row in rows if row[0] is not None]
            first = False
        takes = {(False, m.id): take for m, take in members}
        takes.update({(True, g): take for g, take in groups})
        chosen, more_due_now = oldest_due(rows, takes, left)
        if more_due_now:
            builder.consider(now)
        if not chosen:
            return
        ids = list(chosen)
        assigned = dict(zip(ids, builder.assign(list(chosen.values())), strict=True))
        leased = await conn.fetch(
            sql.LEASE_DUE, ids, now, lease.until, lease.token, lease.node, list(assigned.values())
        )
        chosen_before.extend(ids)
        for row in leased:
            builder.add_leased(assigned.pop(row[0]), tuple(row))
        for member_id in assigned.values():  # another node took these meanwhile
            builder.give_back(member_id)
        if not assigned:
            return
