"""Receivers' saved health (domain.ReceiverHealth) as rows of both SQL stores."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mqpy.model.domain import ReceiverHealth

# In this order in the table's rows, then `changed_at`.
HEALTH_COLUMNS = (
    "subscription_id",
    "last_success_at",
    "last_failure_at",
    "consecutive_failures",
    "unavailable",
    "last_error",
    "last_status",
    "last_message_id",
    "last_attempt",
)


def save_health_sql(placeholders: list[str]) -> str:
    """The upsert of one receiver's health, given each column's placeholder (and one
    more for changed_at): an older save never overwrites a newer one."""
    columns = (*HEALTH_COLUMNS, "changed_at")
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns[1:])
    return (
        f"INSERT INTO receiver_health ({', '.join(columns)}) "
        f"VALUES ({', '.join(placeholders)}) ON CONFLICT (subscription_id) DO UPDATE "
        f"SET {updates} WHERE excluded.changed_at >= receiver_health.changed_at"
    )


def load_health_sql(active: str) -> str:
    """The saved health of active subscriptions; `active`: the store's true literal."""
    return (
        f"SELECT {', '.join('h.' + c for c in HEALTH_COLUMNS)} FROM receiver_health h "
        f"JOIN subscriptions s ON s.id = h.subscription_id WHERE s.active = {active} "
        "ORDER BY h.subscription_id"
    )


def health_row(health: ReceiverHealth) -> tuple[Any, ...]:
    return (
        health.subscription_id,
        health.last_success_at,
        health.last_failure_at,
        health.consecutive_failures,
        health.unavailable,
        health.last_error,
        health.last_status,
        health.last_message_id,
        health.last_attempt,
        health.changed_at,
    )


def health_from_rows(rows: Iterable[Iterable[Any]]) -> list[ReceiverHealth]:
    found = []
    for row in rows:
        sid, success, failure, failures, unavailable, error, status, message, attempt = row
        found.append(
            ReceiverHealth(
                sid, success, failure, failures, bool(unavailable), error, status, message, attempt
            )
        )
    return found
