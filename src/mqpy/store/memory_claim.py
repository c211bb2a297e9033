"""Claiming due deliveries in memory, through the `ClaimBuilder` every store shares
(store/claiming.py): it decides who gets what; this module finds what is due.

A delivery is claimable when it is pending, due, its target has room, and no other
pending delivery of its target with its ordering key is older or out under a lease.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from mqpy.model.domain import Claim, ClaimedDelivery
from mqpy.model.ids import new_lease_token
from mqpy.store.claiming import ClaimBuilder, leased_deliveries
from mqpy.store.memory_state import PENDING, DeliveryRecord, MemoryState
from mqpy.store.memory_writes import pending
from mqpy.store.routes import Member
from mqpy.store.rows import dump_attributes


def claim(
    state: MemoryState,
    *,
    limit: int,
    now: float,
    lease_seconds: float,
    per_subscription_limit: int,
    busy: Mapping[int, int],
    for_subscription: int | None,
) -> Claim:
    builder = ClaimBuilder(
        state.current_routes(),
        limit=limit,
        now=now,
        lease=new_lease_token(),
        per_subscription_limit=per_subscription_limit,
        busy=busy,
        for_subscription=for_subscription,
    )
    waiting = pending(state)
    capped = builder.capped()
    if capped:
        builder.hold_to_cap(_leased_counts(waiting, capped, now))

    def own(is_group: bool, target: int) -> list[DeliveryRecord]:
        return [
            d
            for d in waiting
            if d.of_target(None if is_group else target, target if is_group else None)
        ]

    def due_of(is_group: bool, target: int, most: int) -> list[tuple[int, float]]:
        deliveries = own(is_group, target)
        heads = _heads(deliveries)
        found = sorted((d.due_at, d.id) for d in deliveries if d.due_at <= now and d.id in heads)
        return [(delivery_id, due_at) for due_at, delivery_id in found[:most]]

    def next_due_of(is_group: bool, target: int) -> float | None:
        return min((d.due_at for d in own(is_group, target) if d.due_at > now), default=None)

    chosen = builder.choose(due_of, next_due_of)
    assigned = builder.assign(list(chosen.values()))
    for delivery_id, member_id in zip(chosen, assigned, strict=True):
        record = state.deliveries[delivery_id]
        builder.add_leased(member_id, claim_row(state, record))  # before the attempt counts
        record.attempts += 1
        record.due_at = now + lease_seconds
        record.lease = builder.lease
        record.subscription_id = member_id
    return builder.finish()


def leased(
    state: MemoryState, subscription_id: int, leases: Collection[tuple[int, str]], now: float
) -> list[ClaimedDelivery]:
    """What `Store.leased` answers."""
    rows = []
    for delivery_id in sorted({delivery_id for delivery_id, _ in leases}):
        record = state.deliveries.get(delivery_id)
        if (
            record is not None
            and record.subscription_id == subscription_id
            and record.state == PENDING
            and record.due_at > now
        ):
            rows.append((*claim_row(state, record), record.lease))
    return leased_deliveries(state.current_routes(), subscription_id, rows, leases)


def claim_row(state: MemoryState, record: DeliveryRecord) -> tuple[Any, ...]:
    """A delivery as the shared claim code reads it (claiming.CLAIM_COLUMNS)."""
    message = state.message_of(record)
    return (
        record.id,
        record.attempts,
        record.due_at,
        message.id,
        message.body,
        message.published_at,
        message.topic,
        dump_attributes(message.attributes),
        message.ordering_key,
        message.deliver_at,
    )


def _heads(own: list[DeliveryRecord]) -> set[int]:
    """The deliveries of one target that no other pending delivery of their ordering
    key holds up: the oldest of each key, unless another of the key is out under a
    lease (a redriven head is older than the one it must wait for); and every
    delivery without a key."""
    by_key: dict[str, list[DeliveryRecord]] = {}
    heads = set()
    for d in own:
        if d.ordering_key is None:
            heads.add(d.id)
        else:
            by_key.setdefault(d.ordering_key, []).append(d)
    for same_key in by_key.values():
        oldest = min(same_key, key=lambda d: d.id)
        if not any(d.lease is not None for d in same_key if d is not oldest):
            heads.add(oldest.id)
    return heads


def _leased_counts(
    waiting: list[DeliveryRecord], members: Collection[Member], now: float
) -> dict[int, int]:
    """Per member of `members`, its deliveries under a live lease, on any node."""
    counts: dict[int, int] = {}
    for member in members:
        counts[member.id] = sum(
            1
            for d in waiting
            if d.in_flight(now)
            and d.subscription_id == member.id
            and (member.group_id is None or d.group_id == member.group_id)
            and (member.group_id is not None or d.group_id is None)
        )
    return counts
