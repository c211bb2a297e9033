"""Where a message goes: the active subscriptions and groups, as one value in memory.

Backend-neutral: a store reads its subscription and group rows (`SUBSCRIPTION_ROUTE_COLUMNS`,
`GROUP_ROUTE_COLUMNS`) and `build_routes` makes the value. A store keeps it in a
`RouteTable`, drops it whenever subscriptions change (here or, for a shared database,
on another node) and loads it again inside the next transaction that needs it, so it
always agrees with what that transaction sees.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mqpy.model.domain import DeliveryFormat, Filter, RetryOverrides, SubscriptionKind
from mqpy.model.filters import matches as filter_matches
from mqpy.model.topics import matches as topic_matches
from mqpy.store.rows import load_filter, load_format, load_settings


@dataclass(frozen=True, slots=True)
class Target:
    """What gets one delivery of each matching message: an ungrouped subscription
    (`subscription_id`) or a group (`group_id`)."""

    pattern: str
    filter: Filter | None
    subscription_id: int | None
    group_id: int | None


@dataclass(slots=True)
class Member:
    """An active subscription as the claim needs it."""

    id: int
    url: str
    topic: str
    group_id: int | None
    paused: bool
    secrets: tuple[str | None, str | None, float | None]  # current, previous, until
    retry: RetryOverrides
    max_concurrency: int | None
    max_per_second: float | None
    pull: bool  # consumers pull its deliveries; the dispatcher never claims them
    format: DeliveryFormat  # how its push deliveries are laid out
    disabled: bool = False  # for failing too long: nothing is claimed for it, nothing expires

    def signing_secrets(self, now: float) -> tuple[str, ...]:
        current, previous, until = self.secrets
        return tuple(s for s in (current, previous if (until or 0) > now else None) if s)


@dataclass(slots=True)
class Routes:
    targets: list[Target]
    members: dict[int, Member]
    group_members: dict[int, list[int]]
    group_names: dict[int, str]
    by_topic: dict[str, list[Target]] = field(default_factory=dict)
    # Where each group's next assignment starts, so members take turns.
    turn: dict[int, int] = field(default_factory=dict)

    def for_message(self, topic: str, attributes: Mapping[str, str]) -> list[Target]:
        """Targets whose pattern names `topic` and whose filter the message passes."""
        matching = self.by_topic.get(topic)
        if matching is None:
            if len(self.by_topic) > 10_000:
                self.by_topic.clear()  # bounded memo: topics may be many
            matching = self.by_topic[topic] = [
                t for t in self.targets if topic_matches(t.pattern, topic)
            ]
        return [t for t in matching if filter_matches(t.filter, attributes)]

    def subscriptions_on(self, topic: str) -> int:
        """How many active subscriptions (group members each) name `topic`."""
        return sum(1 for member in self.members.values() if topic_matches(member.topic, topic))


# The columns `build_routes` expects, in order (`subscriptions` and `groups` tables).
SUBSCRIPTION_ROUTE_COLUMNS = (
    "id, url, topic, group_id, paused, secret, previous_secret, previous_secret_until, "
    "filter, settings, kind, disabled_at"
)
GROUP_ROUTE_COLUMNS = "id, topic, name, filter"


class RouteTable:
    """The current `Routes`, loaded on demand; group turns survive a reload."""

    def __init__(self) -> None:
        self._routes: Routes | None = None
        self._turns: dict[int, int] = {}

    def invalidate(self) -> None:
        if self._routes is not None:
            self._turns = self._routes.turn
        self._routes = None

    def get(self, load: Callable[[], Routes]) -> Routes:
        if self._routes is None:
            self._routes = load()
            self._routes.turn = self._turns
        return self._routes


def build_routes(
    subscription_rows: Iterable[Iterable[Any]], group_rows: Iterable[Iterable[Any]]
) -> Routes:
    """Routes from the active subscriptions and groups, each ordered by id."""
    members: dict[int, Member] = {}
    targets: list[Target] = []
    group_members: dict[int, list[int]] = {}
    for row in subscription_rows:
        values = tuple(row)
        sid, url, topic, group_id, paused, secret, previous, until, filter_, settings = values[:10]
        kind, disabled_at = values[10:]
        extra = load_settings(settings)
        members[sid] = Member(
            id=sid,
            url=url,
            topic=topic,
            group_id=group_id,
            paused=bool(paused),
            secrets=(secret, previous, until),
            retry=RetryOverrides(**extra.get("retry", {})),
            max_concurrency=extra.get("max_concurrency"),
            max_per_second=extra.get("max_per_second"),
            pull=kind == SubscriptionKind.PULL,
            format=load_format(extra),
            disabled=disabled_at is not None,
        )
        if group_id is None:
            targets.append(Target(topic, load_filter(filter_), sid, None))
        else:
            group_members.setdefault(group_id, []).append(sid)
    group_names: dict[int, str] = {}
    for group_id, topic, name, filter_ in group_rows:
        group_names[group_id] = name
        if group_id in group_members:
            targets.append(Target(topic, load_filter(filter_), None, group_id))
    return Routes(targets, members, group_members, group_names)
