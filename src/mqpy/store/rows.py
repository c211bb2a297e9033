"""Rows of the SQL stores as domain values, and back: the same text columns on
SQLite and PostgreSQL, so both stores share these conversions."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any, TypeVar

from mqpy.model.domain import (
    DEFAULT_ACK_DEADLINE_SECONDS,
    Attempt,
    AttemptOutcome,
    DeadLetter,
    DeliveryFormat,
    DeliveryState,
    DeliveryStatus,
    Disabled,
    Filter,
    Page,
    RetryOverrides,
    Subscription,
    SubscriptionChanges,
    SubscriptionKind,
    SubscriptionSpec,
)
from mqpy.model.errors import BadCursor, Conflict

SUBSCRIPTION_COLUMNS = (
    "s.id, s.topic, s.url, s.created_at, s.filter, s.settings, s.paused, s.key_id, "
    "s.connection_id, g.name, s.kind, s.failing_since, s.disabled_at, s.disabled_reason"
)
SUBSCRIPTIONS_FROM = "subscriptions s LEFT JOIN groups g ON g.id = s.group_id"


def dump_filter(filter_: Filter | None) -> str | None:
    """A filter as stored; sorted keys so two equal filters compare equal as text."""
    return None if not filter_ else json.dumps(filter_, sort_keys=True, separators=(",", ":"))


def load_filter(text: str | None) -> Filter | None:
    return None if text is None else json.loads(text)


def dump_settings(spec: SubscriptionSpec) -> str:
    return json.dumps(
        {
            "retry": asdict(spec.retry),
            "max_concurrency": spec.max_concurrency,
            "max_per_second": spec.max_per_second,
            "ack_deadline_seconds": spec.ack_deadline_seconds,
            "format": spec.format.value,
            "disable_after_seconds": spec.disable_after_seconds,
        }
    )


def load_settings(text: str | None) -> dict[str, Any]:
    return {} if text is None else dict(json.loads(text))


def load_format(settings: Mapping[str, Any]) -> DeliveryFormat:
    """A subscription's delivery format from its settings; those stored before formats
    existed have none, and deliver as they always did (mq)."""
    return DeliveryFormat(settings.get("format", DeliveryFormat.MQ))


def subscription_from_row(row: Iterable[Any]) -> Subscription:
    (
        sid,
        topic,
        url,
        created_at,
        filter_,
        settings,
        paused,
        key_id,
        connection_id,
        group,
        kind,
        failing_since,
        disabled_at,
        disabled_reason,
    ) = row
    extra = load_settings(settings)
    spec = SubscriptionSpec(
        url=url,
        topic=topic,
        group=group,
        filter=load_filter(filter_),
        retry=RetryOverrides(**extra.get("retry", {})),
        max_concurrency=extra.get("max_concurrency"),
        max_per_second=extra.get("max_per_second"),
        kind=SubscriptionKind(kind),
        ack_deadline_seconds=extra.get("ack_deadline_seconds", DEFAULT_ACK_DEADLINE_SECONDS),
        format=load_format(extra),
        disable_after_seconds=extra.get("disable_after_seconds"),
    )
    return Subscription(
        id=sid,
        spec=spec,
        created_at=created_at,
        paused=bool(paused),
        key_id=key_id,
        connection_id=connection_id,
        failing_since=failing_since,
        disabled=None if disabled_at is None else Disabled(disabled_at, disabled_reason or ""),
    )


def dump_attributes(attributes: dict[str, str] | Any) -> str | None:
    return json.dumps(dict(attributes), separators=(",", ":")) if attributes else None


def load_attributes(text: str | None) -> dict[str, str]:
    return {} if text is None else dict(json.loads(text))


def group_filter_conflict(spec: SubscriptionSpec, current: str | None) -> Conflict:
    """A member joining a group with a filter other than the group's (`current`, as
    `dump_filter` writes it)."""
    return Conflict(
        f"the group {spec.group!r} on {spec.topic!r} has the filter "
        f"{current or 'none'}; its members must all carry the same filter"
    )


def shared_filter_conflict(subscription_id: int, group: str | None, members: int) -> Conflict:
    """A filter change on one of a group's `members` while others remain."""
    return Conflict(
        f"subscription {subscription_id} shares the group {group!r} with "
        f"{members - 1} other member(s); a group's members must all carry the same "
        "filter, so change it on a new group"
    )


def changed_spec(spec: SubscriptionSpec, changes: SubscriptionChanges) -> SubscriptionSpec:
    """`spec` with a partial update applied."""
    filter_ = None if changes.clear_filter else changes.filter or spec.filter
    concurrency = (
        None if changes.clear_max_concurrency else changes.max_concurrency or spec.max_concurrency
    )
    pace = None if changes.clear_max_per_second else changes.max_per_second or spec.max_per_second
    disable_after = (
        None
        if changes.clear_disable_after
        else changes.disable_after_seconds or spec.disable_after_seconds
    )
    return replace(
        spec,
        url=changes.url or spec.url,
        filter=filter_,
        retry=changes.retry if changes.retry is not None else spec.retry,
        max_concurrency=concurrency,
        max_per_second=pace,
        format=changes.format or spec.format,
        disable_after_seconds=disable_after,
    )


# What delivery_status() takes after `now`, from deliveries d LEFT JOIN groups g.
DELIVERY_STATUS_COLUMNS = (
    "d.subscription_id, g.name, d.state, d.attempts, d.last_status, d.last_error, "
    "d.due_at, d.lease, d.delivered_at, d.sent_at, d.duration"
)


def delivery_status(
    now: float,
    subscription_id: int | None,
    group: str | None,
    state: str,
    attempts: int,
    last_status: int | None,
    last_error: str | None,
    due_at: float,
    lease: str | None,
    delivered_at: float | None,
    sent_at: float | None,
    duration: float | None,
    *,
    history: tuple[Attempt, ...] = (),
) -> DeliveryStatus:
    """A delivery as DELIVERY_STATUS_COLUMNS read it, with its failed attempts'
    `history`; the attempt that delivered it is on its own row (store/history.py)."""
    next_attempt: float | None = None
    if state == "pending":
        if lease is not None:
            shown = DeliveryState.PENDING  # being attempted now
        elif due_at > now:
            shown, next_attempt = DeliveryState.WAITING, due_at
        else:
            shown, next_attempt = DeliveryState.PENDING, due_at
    else:
        shown = DeliveryState(state)
    if shown is DeliveryState.DELIVERED and sent_at is not None and subscription_id is not None:
        success = Attempt(
            attempts,
            subscription_id,
            sent_at,
            duration,
            AttemptOutcome.DELIVERED,
            last_status,
            None,
        )
        history = (*history, success)
    return DeliveryStatus(
        subscription_id=subscription_id,
        group=group,
        state=shown,
        attempts=attempts,
        last_status=last_status,
        last_error=last_error,
        next_attempt_at=next_attempt,
        delivered_at=delivered_at,
        history=history,
    )


# A dead letter with what its page's cursor is made of; the SQL stores add their
# own WHERE (after the cursor, and for one subscription) and ORDER BY d.dead_at, d.id.
DEAD_LETTER_QUERY = (
    "SELECT m.id, d.subscription_id, d.attempts, d.last_error, d.dead_at, m.body, "
    "m.topic, d.last_status, m.attributes, d.id "
    "FROM deliveries d JOIN messages m ON m.seq = d.message_seq WHERE d.state = 'dead'"
)


def dead_letter_cursor(cursor: str | None) -> tuple[float, int]:
    """Where a page of dead letters starts: after this (dead at, delivery id)."""
    if cursor is None:
        return (float("-inf"), 0)
    try:
        dead_at, delivery_id = cursor.split(":")
        return (float(dead_at), int(delivery_id))
    except ValueError:
        raise BadCursor(f"the cursor {cursor!r} was not handed out by this list") from None


def dead_letter_page(rows: Sequence[Any], limit: int) -> Page[DeadLetter]:
    """A page from up to `limit + 1` rows of DEAD_LETTER_QUERY: one row more than the
    page holds says that another page follows."""
    page = rows[:limit]
    letters = [
        DeadLetter(
            message_id=row[0],
            receiver_id=row[1],
            attempts=row[2],
            last_error=row[3],
            dead_at=row[4],
            body=row[5],
            topic=row[6],
            last_status=row[7],
            attributes=load_attributes(row[8]),
        )
        for row in page
    ]
    more = len(rows) > limit
    return Page(letters, f"{page[-1][4]!r}:{page[-1][9]}" if more else None)


T = TypeVar("T")

# Items per statement that binds a list of them (`IN (...)`, `VALUES (...), ...`): far
# below SQLite's limit on parameters, and a bounded statement on PostgreSQL.
CHUNK = 500


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    """`items` in slices of at most `size`, in order."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
