"""Claiming due deliveries under a lease, for ungrouped subscriptions and groups.

A delivery is claimable when it is pending, due, its target has room, and no older
pending delivery of the same target shares its ordering key: so one key goes out one
message at a time, in publish order, and a failing head holds up only its own key.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mqpy.domain import Claim, Delivery
from mqpy.ids import new_lease_token
from mqpy.store.sqlite_routes import Member, Routes
from mqpy.store.sqlite_rows import load_attributes

_COLUMNS = (
    "d.id, d.attempts, d.due_at, m.id, m.body, m.published_at, m.topic, m.attributes, "
    "m.ordering_key, m.deliver_at"
)
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


_NO_ATTRIBUTES: dict[str, str] = {}  # shared, never changed: most messages have none


@dataclass(slots=True)
class _Candidate:
    due_at: float
    delivery: Delivery


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
    # A subscription's own max_concurrency replaces the caller's default cap.
    room = {
        member.id: (member.max_concurrency or per_subscription_limit) - busy.get(member.id, 0)
        for member in routes.members.values()
        if not member.paused
    }
    candidates: list[_Candidate] = []
    next_due: float | None = None
    secrets: dict[int, tuple[str, ...]] = {}  # per member, worked out once per claim

    def consider(upcoming: float | None) -> None:
        nonlocal next_due
        if upcoming is not None and (next_due is None or upcoming < next_due):
            next_due = upcoming

    for member in routes.members.values():
        if member.group_id is not None or room.get(member.id, 0) <= 0:
            continue
        take = min(room[member.id], limit)
        rows = conn.execute(_DUE_FOR_SUBSCRIPTION, (member.id, now, take + 1)).fetchall()
        # The one row beyond what we take tells whether more are due right now.
        if len(rows) > take:
            consider(now)
        else:
            consider(conn.execute(_NEXT_FOR_SUBSCRIPTION, (member.id, now)).fetchone()[0])
        candidates.extend(
            _Candidate(row[2], _delivery(row, member, lease, _secrets(secrets, member, now)))
            for row in rows[:take]
        )
    for group_id, member_ids in routes.group_members.items():
        free = [routes.members[m] for m in member_ids if room.get(m, 0) > 0]
        total = min(sum(room[m.id] for m in free), limit)
        if total <= 0:
            continue
        rows = conn.execute(_DUE_FOR_GROUP, (group_id, now, total + 1)).fetchall()
        if len(rows) > total:
            consider(now)
        else:
            consider(conn.execute(_NEXT_FOR_GROUP, (group_id, now)).fetchone()[0])
        start = routes.turn.get(group_id, 0)
        for index, row in enumerate(rows[:total]):
            member = _next_member(free, room, start + index)
            room[member.id] -= 1
            delivery = _delivery(row, member, lease, _secrets(secrets, member, now))
            candidates.append(_Candidate(row[2], delivery))
        routes.turn[group_id] = start + len(rows[:total])
    candidates.sort(key=lambda candidate: candidate.due_at)
    chosen = [candidate.delivery for candidate in candidates[:limit]]
    if len(candidates) > limit:
        next_due = now
    conn.executemany(
        "UPDATE deliveries SET attempts = attempts + 1, due_at = ?, lease = ?, "
        "subscription_id = ? WHERE id = ?",
        [(now + lease_seconds, lease, d.subscription_id, d.delivery_id) for d in chosen],
    )
    return Claim(chosen, next_due)


def _next_member(free: list[Member], room: dict[int, int], turn: int) -> Member:
    """Members take turns; one with no room left is skipped. `free` always has one
    with room, since the group was asked for no more rows than its members' room."""
    for offset in range(len(free)):
        member = free[(turn + offset) % len(free)]
        if room[member.id] > 0:
            return member
    raise AssertionError("a group claimed more deliveries than its members have room for")


def _secrets(known: dict[int, tuple[str, ...]], member: Member, now: float) -> tuple[str, ...]:
    found = known.get(member.id)
    if found is None:
        found = known[member.id] = member.signing_secrets(now)
    return found


def _delivery(
    row: tuple[Any, ...], member: Member, lease: str, secrets: tuple[str, ...]
) -> Delivery:
    (
        delivery_id,
        attempts,
        _due,
        message_id,
        body,
        published_at,
        topic,
        attributes,
        key,
        deliver_at,
    ) = row
    return Delivery(
        delivery_id=delivery_id,
        lease=lease,
        message_id=message_id,
        subscription_id=member.id,
        url=member.url,
        body=body,
        attempt=attempts + 1,
        published_at=published_at,
        secrets=secrets,
        topic=topic,
        attributes=load_attributes(attributes) if attributes is not None else _NO_ATTRIBUTES,
        ordering_key=key,
        retry=member.retry,
        max_per_second=member.max_per_second,
        max_concurrency=member.max_concurrency,
        deliver_at=deliver_at,
    )
