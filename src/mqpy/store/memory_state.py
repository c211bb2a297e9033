"""The in-memory store's state: plain records in dicts, one `MemoryState` per store.

Each `MemoryStore` is a view of one `MemoryState`. Several views of one state are
several nodes sharing one store (as two brokers share one PostgreSQL database), and a
view closed and opened again on the same state is a restart. Every store operation runs
to its end without awaiting, so on one event loop each is a transaction of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field

from mqpy.model.domain import (
    ApiKey,
    Attempt,
    Connection,
    Disabled,
    Filter,
    NodeInfo,
    ReceiverHealth,
    Subscription,
    SubscriptionSpec,
)
from mqpy.model.ids import new_connection_id
from mqpy.store.routes import Routes, RouteTable, build_routes
from mqpy.store.rows import dump_filter, dump_settings

PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"


@dataclass(slots=True)
class SubscriptionRecord:
    id: int
    spec: SubscriptionSpec
    created_at: float
    secret: str | None
    group_id: int | None
    key_id: str | None
    connection_id: int | None
    paused: bool = False
    active: bool = True
    previous_secret: str | None = None
    previous_secret_until: float | None = None
    failing_since: float | None = None
    disabled: Disabled | None = None

    def public(self) -> Subscription:
        return Subscription(
            id=self.id,
            spec=self.spec,
            created_at=self.created_at,
            paused=self.paused,
            key_id=self.key_id,
            connection_id=self.connection_id,
            failing_since=self.failing_since,
            disabled=self.disabled,
        )

    def failing(self) -> bool:
        """Could be disabled for failing: active, on, a push subscription, failing."""
        return (
            self.failing_since is not None
            and self.active
            and not self.paused
            and self.disabled is None
            and self.spec.kind == "push"
        )


@dataclass(slots=True)
class GroupRecord:
    id: int
    topic: str
    name: str
    filter: Filter | None
    active: bool = True


@dataclass(slots=True)
class MessageRecord:
    seq: int
    id: str
    topic: str
    body: str
    published_at: float
    attributes: dict[str, str]
    ordering_key: str | None
    deliver_at: float | None
    done_at: float | None  # nothing left to deliver since then; swept after retention


@dataclass(slots=True)
class DeliveryRecord:
    id: int
    seq: int  # its message's
    subscription_id: int | None  # None: a group's, never attempted yet
    group_id: int | None
    ordering_key: str | None
    due_at: float  # while leased: when the lease runs out
    state: str = PENDING
    attempts: int = 0
    lease: str | None = None
    last_status: int | None = None
    last_error: str | None = None
    delivered_at: float | None = None
    dead_at: float | None = None
    sent_at: float | None = None  # of the attempt that delivered it
    duration: float | None = None
    history: list[Attempt] = field(default_factory=list)  # failed attempts, oldest first

    def of_target(self, subscription_id: int | None, group_id: int | None) -> bool:
        """Whether it is this ungrouped subscription's, or this group's."""
        if group_id is not None:
            return self.group_id == group_id
        return self.group_id is None and self.subscription_id == subscription_id

    def in_flight(self, now: float) -> bool:
        """Out under a lease that still runs: its holder may yet settle it."""
        return self.state == PENDING and self.lease is not None and self.due_at > now


@dataclass(slots=True)
class KeyRecord:
    key: ApiKey
    revoked_at: float | None = None


@dataclass(slots=True)
class TopicRecord:
    first_seen: float
    published: int = 0


class MemoryState:
    """Everything a store keeps, as plain Python values."""

    def __init__(self) -> None:
        self.connections: dict[int, Connection] = {}
        self.disconnected: set[int] = set()
        self.subscriptions: dict[int, SubscriptionRecord] = {}
        self.groups: dict[int, GroupRecord] = {}
        self.messages: dict[int, MessageRecord] = {}  # by seq, in publish order
        self.message_seqs: dict[str, int] = {}  # message id: seq
        self.deliveries: dict[int, DeliveryRecord] = {}  # by id, in creation order
        # (publisher key id or "", idempotency key): (message id, recorded at)
        self.idempotency: dict[tuple[str, str], tuple[str, float]] = {}
        self.topics: dict[str, TopicRecord] = {}
        self.keys: dict[str, KeyRecord] = {}
        self.nodes: dict[str, NodeInfo] = {}
        self.health: dict[int, tuple[ReceiverHealth, float]] = {}  # with its changed_at
        self.delivered = 0  # deliveries acknowledged, ever
        self.catalog_version = 0
        self.routes = RouteTable()
        self._seq = 0
        self._delivery_id = 0
        self._group_id = 0
        # Views that asked to hear of other views' changes (Store.watch).
        self.watchers: list[tuple[object, Callable[[], None], Callable[[], None]]] = []

    # Ids.

    def new_id(self) -> int:
        """A random id no connection or subscription ever had."""
        while True:
            candidate = new_connection_id()
            if candidate not in self.connections and candidate not in self.subscriptions:
                return candidate

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def next_delivery_id(self) -> int:
        self._delivery_id += 1
        return self._delivery_id

    def next_group_id(self) -> int:
        self._group_id += 1
        return self._group_id

    # Catalog.

    def catalog_changed(self, by: object) -> None:
        """Connections, subscriptions, groups or keys changed: routes are stale."""
        self.catalog_version += 1
        self.routes.invalidate()
        for view, _, on_catalog in self.watchers:
            if view is not by:
                on_catalog()

    def made_due(self, by: object) -> None:
        """Deliveries became due (a publish, a redrive): wake the other views."""
        for view, on_due, _ in self.watchers:
            if view is not by:
                on_due()

    def current_routes(self) -> Routes:
        return self.routes.get(self._load_routes)

    def _load_routes(self) -> Routes:
        # Rows as the SQL stores read them (SUBSCRIPTION_ROUTE_COLUMNS, GROUP_ROUTE_COLUMNS),
        # so routes are built by the one function every store shares.
        subscriptions = [
            (
                s.id,
                s.spec.url,
                s.spec.topic,
                s.group_id,
                s.paused,
                s.secret,
                s.previous_secret,
                s.previous_secret_until,
                dump_filter(s.spec.filter),
                dump_settings(s.spec),
                s.spec.kind.value,
                None if s.disabled is None else s.disabled.at,
            )
            for s in sorted(self.subscriptions.values(), key=lambda s: s.id)
            if s.active
        ]
        groups = [
            (g.id, g.topic, g.name, dump_filter(g.filter))
            for g in sorted(self.groups.values(), key=lambda g: g.id)
            if g.active
        ]
        return build_routes(subscriptions, groups)

    def active_subscription(self, subscription_id: int) -> SubscriptionRecord | None:
        found = self.subscriptions.get(subscription_id)
        return found if found is not None and found.active else None

    def group_members(self, group_id: int) -> list[SubscriptionRecord]:
        return [s for s in self.subscriptions.values() if s.group_id == group_id and s.active]

    # Messages and deliveries.

    def message_of(self, delivery: DeliveryRecord) -> MessageRecord:
        return self.messages[delivery.seq]

    def deliveries_of(self, seqs: Collection[int]) -> Iterator[DeliveryRecord]:
        return (d for d in self.deliveries.values() if d.seq in seqs)

    def undone_messages(self) -> int:
        """Messages not fully delivered (dead letters count): what --max-backlog bounds."""
        return sum(1 for m in self.messages.values() if m.done_at is None)

    def finish_messages(self, seqs: Collection[int], now: float) -> None:
        """Mark those of these messages with nothing left to deliver as done."""
        unfinished = {d.seq for d in self.deliveries_of(seqs) if d.state in (PENDING, DEAD)}
        for seq in seqs:
            found = self.messages.get(seq)
            if found is not None and found.done_at is None and seq not in unfinished:
                found.done_at = now

    def count_published(self, topic: str, count: int, at: float) -> None:
        record = self.topics.setdefault(topic, TopicRecord(at))
        record.first_seen = min(record.first_seen, at)
        record.published += count
