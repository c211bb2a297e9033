"""Subscription rows that the SQL stores write and page through the same way: the
values of a new subscription's row, and a page of active subscriptions, optionally
those matching a topic. A topic pattern cannot be matched in SQL, so the stores read
subscriptions in id order, a chunk at a time, and match here; the loop that fills a
page lives here once, and each store only runs its own query for the next chunk."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mqpy.model.domain import Page, Subscription, SubscriptionSpec
from mqpy.model.topics import matches
from mqpy.store.rows import dump_filter, dump_settings, subscription_from_row

# What a new subscription row holds, in the order of `new_subscription_values`.
NEW_SUBSCRIPTION_COLUMNS = (
    "id, topic, url, created_at, secret, group_id, filter, settings, key_id, connection_id, kind"
)


def new_subscription_values(
    subscription_id: int,
    spec: SubscriptionSpec,
    now: float,
    *,
    secret: str | None,
    group_id: int | None,
    key_id: str | None,
    connection_id: int | None,
) -> tuple[Any, ...]:
    """The values of a new subscription row, for NEW_SUBSCRIPTION_COLUMNS."""
    return (
        subscription_id,
        spec.topic,
        spec.url,
        now,
        secret,
        group_id,
        dump_filter(spec.filter),
        dump_settings(spec),
        key_id,
        connection_id,
        spec.kind.value,
    )


def page_of(found: list[Subscription], limit: int) -> Page[Subscription]:
    """The first `limit` of `found` (in id order), with a cursor if more were found."""
    page = found[:limit]
    return Page(page, str(page[-1].id) if len(found) > limit else None)


class SubscriptionPager:
    """Fills one page from chunks of subscription rows (SUBSCRIPTION_COLUMNS, by id):

    pager = SubscriptionPager(topic, int_cursor(cursor), limit)
    while pager.wants_more():
        pager.take(<rows with id > pager.after, by id, at most pager.chunk>)
    return pager.page()
    """

    def __init__(self, topic: str | None, after: int | None, limit: int) -> None:
        self._topic = topic
        self._limit = limit
        self._found: list[Subscription] = []
        self._ended = False
        self.after = after if after is not None else 0
        # One row beyond a page tells whether the table goes on.
        self.chunk = limit + 1

    def wants_more(self) -> bool:
        return not self._ended and len(self._found) <= self._limit

    def take(self, rows: Sequence[Any]) -> None:
        for row in rows:
            if self._topic is None or matches(row[1], self._topic):
                self._found.append(subscription_from_row(row))
        if len(rows) < self.chunk:
            self._ended = True
        else:
            self.after = rows[-1][0]

    def page(self) -> Page[Subscription]:
        return page_of(self._found, self._limit)
