"""Rows of the subscriptions table as domain values, and back."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict
from typing import Any

from mqpy.domain import Filter, RetryOverrides, Subscription, SubscriptionSpec

SUBSCRIPTION_COLUMNS = (
    "s.id, s.topic, s.url, s.created_at, s.filter, s.settings, s.paused, s.key_id, "
    "s.connection_id, g.name"
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
        }
    )


def load_settings(text: str | None) -> dict[str, Any]:
    return {} if text is None else dict(json.loads(text))


def subscription_from_row(row: sqlite3.Row | tuple[Any, ...]) -> Subscription:
    (sid, topic, url, created_at, filter_, settings, paused, key_id, connection_id, group) = row
    extra = load_settings(settings)
    spec = SubscriptionSpec(
        url=url,
        topic=topic,
        group=group,
        filter=load_filter(filter_),
        retry=RetryOverrides(**extra.get("retry", {})),
        max_concurrency=extra.get("max_concurrency"),
        max_per_second=extra.get("max_per_second"),
    )
    return Subscription(
        id=sid,
        spec=spec,
        created_at=created_at,
        paused=bool(paused),
        key_id=key_id,
        connection_id=connection_id,
    )


def dump_attributes(attributes: dict[str, str] | Any) -> str | None:
    return json.dumps(dict(attributes), separators=(",", ":")) if attributes else None


def load_attributes(text: str | None) -> dict[str, str]:
    return {} if text is None else dict(json.loads(text))
