"""Which deliveries are past their receiver's max-age, decided alike on every backend.

A failed attempt dead-letters its delivery when the next one would fall past max-age
(the retry policy). A delivery that is never attempted (its subscription paused, its
receiver paused for failing, or a backlog that does not drain) has no failure to
check at, so the store dead-letters it on its own once its message is older than the
max-age: a backend reads its routes, asks `expiry_targets` for one cutoff per
ungrouped subscription and per group, and dead-letters, for each, the pending
deliveries that nobody holds under a live lease and whose message aged from before
the cutoff (a delayed message ages from its deliver_at, as for the retry policy).
"""

from __future__ import annotations

from dataclasses import dataclass

from mqpy.config import format_duration
from mqpy.store.routes import Member, Routes

# Deliveries dead-lettered per statement: one target's backlog expiring at once
# does not hold the writer (or a PostgreSQL transaction's locks) for long.
EXPIRE_CHUNK = 500


@dataclass(frozen=True, slots=True)
class ExpiryTarget:
    """An ungrouped subscription (`group_id` None) or a group, its cutoff, and the
    member a group's never-attempted delivery is dead-lettered under."""

    subscription_id: int
    group_id: int | None
    cutoff: float  # a delivery whose message ages from before this has expired
    error: str  # the dead letter's last_error


def expiry_targets(routes: Routes, *, now: float, max_age: float) -> list[ExpiryTarget]:
    """One target per ungrouped subscription and per group with members. A group's
    deliveries expire by the longest max-age among its members: none of them would
    still try the delivery past that."""
    targets = []
    for member in routes.members.values():
        # A disabled subscription's deliveries wait for it to be resumed (its receiver
        # fixed), however old they get.
        if member.group_id is None and not member.disabled:
            age = _max_age(member, max_age)
            targets.append(ExpiryTarget(member.id, None, now - age, expired_error(age)))
    for group_id, member_ids in routes.group_members.items():
        members = [
            routes.members[m]
            for m in member_ids
            if m in routes.members and not routes.members[m].disabled
        ]
        if not members:
            continue
        age = max(_max_age(m, max_age) for m in members)
        targets.append(ExpiryTarget(members[0].id, group_id, now - age, expired_error(age)))
    return targets


def expired_error(max_age: float) -> str:
    return f"not delivered within its max-age of {format_duration(max_age)}"


def _max_age(member: Member, default: float) -> float:
    own = member.retry.max_age_seconds
    return default if own is None else own
