"""Seek and start_at, backend-neutral: whose deliveries a seek moves, and which
retained messages it replays.

A seek (and a new subscription's `start_at`) works on a target: an ungrouped
subscription, or the group a member belongs to, since a group's members share one
delivery of each message. The stores do the writing; this module decides.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from mqpy.model.filters import matches as filter_matches
from mqpy.model.topics import matches as topic_matches
from mqpy.store.routes import Routes, Target
from mqpy.store.rows import load_attributes

# The message columns a replay reads, in this order (`replayable`).
REPLAY_COLUMNS = "seq, topic, attributes, ordering_key, deliver_at, done_at"


def target_of(routes: Routes, subscription_id: int) -> Target | None:
    """The target whose deliveries a seek on this subscription moves: its own, or its
    group's. None if it is not an active subscription."""
    member = routes.members.get(subscription_id)
    if member is None:
        return None
    for target in routes.targets:
        if member.group_id is None and target.subscription_id == subscription_id:
            return target
        if member.group_id is not None and target.group_id == member.group_id:
            return target
    return None


def replayable(rows: Iterable[Sequence[Any]], target: Target) -> list[Sequence[Any]]:
    """Of message rows (REPLAY_COLUMNS), those `target` takes: its pattern names their
    topic and its filter passes their attributes."""
    return [
        row
        for row in rows
        if topic_matches(target.pattern, row[1])
        # Parsing a row's attributes costs more than the rest: only for a filter.
        and (not target.filter or filter_matches(target.filter, load_attributes(row[2])))
    ]


def due_at(deliver_at: float | None, now: float) -> float:
    """When a replayed message is due: now, or at its deliver_at if that is later."""
    return max(now, deliver_at or 0.0)
