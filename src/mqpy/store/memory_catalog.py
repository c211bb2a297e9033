"""The in-memory store's lifecycle and catalog: nodes, receivers' health,
connections, subscriptions and groups, API keys (see memory.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from mqpy.model.domain import (
    ApiKey,
    Connection,
    Disabled,
    Filter,
    Mode,
    NodeInfo,
    Page,
    ReceiverHealth,
    SeekResult,
    StartAt,
    Subscription,
    SubscriptionChanges,
    SubscriptionSpec,
    int_cursor,
)
from mqpy.model.errors import Conflict, StoreUnavailable
from mqpy.model.events import subscription_disabled, subscription_resumed
from mqpy.model.ids import node_name
from mqpy.model.topics import is_pattern
from mqpy.model.topics import matches as topic_matches
from mqpy.store import memory_writes
from mqpy.store.base import Store
from mqpy.store.memory_replay import seek as seek_target
from mqpy.store.memory_state import (
    GroupRecord,
    KeyRecord,
    MemoryState,
    SubscriptionRecord,
    TopicRecord,
)
from mqpy.store.replay import target_of
from mqpy.store.routes import Target
from mqpy.store.rows import (
    changed_spec,
    dump_filter,
    group_filter_conflict,
    shared_filter_conflict,
)
from mqpy.store.subscription_rows import page_of


class MemoryCatalog(Store):
    """What `MemoryStore` keeps of the catalog, on a `MemoryState` (a new, empty one if
    none is given), telling time by `clock` (a fake one in tests)."""

    def __init__(
        self, state: MemoryState | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.state = MemoryState() if state is None else state
        self.node = node_name()
        self._clock = clock
        self._open = False

    def clock(self) -> float:
        return self._clock()

    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False
        self.state.watchers = [w for w in self.state.watchers if w[0] is not self]

    def _s(self) -> MemoryState:
        """The state, for an operation: a closed store does none."""
        if not self._open:
            raise StoreUnavailable("the store is closed")
        return self.state

    def watch(self, on_due: Callable[[], None], on_catalog: Callable[[], None]) -> None:
        self.state.watchers.append((self, on_due, on_catalog))

    async def catalog_version(self) -> int:
        return self._s().catalog_version

    async def heartbeat(self, node: NodeInfo) -> None:
        nodes = self._s().nodes
        nodes[node.name] = node
        # Nodes that stopped a day ago are history no one asks about.
        for name in [n.name for n in nodes.values() if n.seen_at < node.seen_at - 86400.0]:
            del nodes[name]

    async def nodes(self, *, seen_since: float) -> list[NodeInfo]:
        found = (n for n in self._s().nodes.values() if n.seen_at >= seen_since)
        return sorted(found, key=lambda n: n.name)

    async def save_receiver_health(self, health: Sequence[ReceiverHealth]) -> None:
        saved = self._s().health
        for h in health:
            kept = saved.get(h.subscription_id)
            if kept is None or h.changed_at >= kept[1]:
                saved[h.subscription_id] = (h, h.changed_at)

    async def receiver_health(self) -> list[ReceiverHealth]:
        state = self._s()
        return [
            health
            for sid, (health, _) in sorted(state.health.items())
            if state.active_subscription(sid) is not None
        ]

    # Connections and subscriptions.

    async def add_connection(
        self,
        mode: Mode,
        client_url: str,
        topic: str,
        now: float,
        *,
        key_id: str | None = None,
        secret: str | None = None,
        group: str | None = None,
        filter: Filter | None = None,
        start_at: StartAt = None,
    ) -> Connection:
        state = self._s()
        connection = Connection(state.new_id(), mode, client_url, topic, now, key_id)
        if mode is Mode.RECEIVE:
            spec = SubscriptionSpec(url=client_url, topic=topic, group=group, filter=filter)
            self._add_subscription(
                connection.id, spec, now, key_id, secret, connection.id, start_at
            )
        state.connections[connection.id] = connection
        state.catalog_changed(self)
        return connection

    async def add_subscription(
        self,
        spec: SubscriptionSpec,
        now: float,
        *,
        key_id: str | None,
        secret: str | None,
        paused: bool = False,
        start_at: StartAt = None,
    ) -> Subscription:
        return self._add_subscription(
            self._s().new_id(), spec, now, key_id, secret, None, start_at, paused=paused
        ).public()

    def _add_subscription(
        self,
        subscription_id: int,
        spec: SubscriptionSpec,
        now: float,
        key_id: str | None,
        secret: str | None,
        connection_id: int | None,
        start_at: StartAt,
        *,
        paused: bool = False,
    ) -> SubscriptionRecord:
        state = self._s()
        group_id, new_target = None, True
        if spec.group is not None:
            group_id, new_target = self._join_group(spec)
        record = SubscriptionRecord(
            subscription_id, spec, now, secret, group_id, key_id, connection_id, paused
        )
        state.subscriptions[subscription_id] = record
        if not is_pattern(spec.topic):
            state.topics.setdefault(spec.topic, TopicRecord(now))
        state.catalog_changed(self)
        if new_target and start_at is not None:
            # A member joining a group that exists takes the group's place instead.
            own_id = None if group_id is not None else subscription_id
            seek_target(state, Target(spec.topic, spec.filter, own_id, group_id), start_at, now)
        return record

    def _join_group(self, spec: SubscriptionSpec) -> tuple[int, bool]:
        """The active group this member joins (created if new), and whether it is new."""
        state = self.state
        for group in state.groups.values():
            if group.active and (group.topic, group.name) == (spec.topic, spec.group):
                if dump_filter(group.filter) != dump_filter(spec.filter):
                    raise group_filter_conflict(spec, dump_filter(group.filter))
                return group.id, False
        assert spec.group is not None
        group_id = state.next_group_id()
        state.groups[group_id] = GroupRecord(group_id, spec.topic, spec.group, spec.filter)
        return group_id, True

    async def seek(self, subscription_id: int, time: float, now: float) -> SeekResult | None:
        state = self._s()
        target = target_of(state.current_routes(), subscription_id)
        return None if target is None else seek_target(state, target, time, now)

    async def subscription(self, subscription_id: int) -> Subscription | None:
        record = self._s().active_subscription(subscription_id)
        return None if record is None else record.public()

    async def subscriptions(
        self, *, topic: str | None = None, cursor: str | None = None, limit: int = 100
    ) -> Page[Subscription]:
        after = int_cursor(cursor) or 0
        found = [
            s.public()
            for s in sorted(self._s().subscriptions.values(), key=lambda s: s.id)
            if s.active and s.id > after and (topic is None or topic_matches(s.spec.topic, topic))
        ]
        return page_of(found, limit)

    async def update_subscription(
        self, subscription_id: int, changes: SubscriptionChanges
    ) -> Subscription | None:
        state = self._s()
        record = state.active_subscription(subscription_id)
        if record is None:
            return None
        spec = changed_spec(record.spec, changes)
        if spec.filter != record.spec.filter and record.group_id is not None:
            members = len(state.group_members(record.group_id))
            if members > 1:
                raise shared_filter_conflict(subscription_id, spec.group, members)
            state.groups[record.group_id].filter = spec.filter
        record.spec = spec
        if record.connection_id is not None:
            old = state.connections[record.connection_id]
            state.connections[old.id] = Connection(
                old.id, old.mode, spec.url, old.topic, old.connected_at, old.key_id
            )
        state.catalog_changed(self)
        return record.public()

    async def set_paused(self, subscription_id: int, paused: bool) -> Subscription | None:
        state = self._s()
        record = state.active_subscription(subscription_id)
        if record is None:
            return None
        record.paused = paused
        state.catalog_changed(self)
        return record.public()

    async def resume(self, subscription_id: int, now: float) -> Subscription | None:
        state = self._s()
        record = state.active_subscription(subscription_id)
        if record is None:
            return None
        was_disabled = record.disabled
        record.paused, record.disabled, record.failing_since = False, None, None
        state.catalog_changed(self)
        if was_disabled is not None:
            event = subscription_resumed(record.public(), now, was_disabled.at)
            memory_writes.publish_events(state, [event], now)
        return record.public()

    async def failing_subscriptions(self) -> list[Subscription]:
        records = sorted(self._s().subscriptions.values(), key=lambda s: s.id)
        return [s.public() for s in records if s.failing()]

    async def disable_subscription(
        self, subscription_id: int, *, failing_since: float, now: float, reason: str
    ) -> Subscription | None:
        state = self._s()
        record = state.subscriptions.get(subscription_id)
        if record is None or not record.failing() or record.failing_since != failing_since:
            return None
        record.disabled = Disabled(now, reason)
        state.catalog_changed(self)
        memory_writes.publish_events(state, [subscription_disabled(record.public())], now)
        return record.public()

    async def remove_subscription(self, subscription_id: int, now: float) -> Subscription | None:
        state = self._s()
        record = state.active_subscription(subscription_id)
        if record is None:
            return None
        if record.connection_id is not None:
            state.disconnected.add(record.connection_id)
        self._end_subscription(record, now)
        return record.public()

    def _end_subscription(self, record: SubscriptionRecord, now: float) -> None:
        state = self.state
        record.active = False
        state.catalog_changed(self)
        group_id = record.group_id
        if group_id is not None and state.group_members(group_id):
            # The group's work stays for the other members; what this member held is
            # due again now rather than when its lease would run out.
            for d in memory_writes.pending(state):
                if d.group_id == group_id and d.subscription_id == record.id and d.lease:
                    d.lease, d.due_at = None, now
            return
        if group_id is not None:
            state.groups[group_id].active = False
        # Dead letters go too: nothing could redrive them to a receiver that is gone.
        # Delivered ones stay, as the message's history, until the message is swept.
        doomed = [
            d
            for d in state.deliveries.values()
            if d.of_target(record.id, group_id) and d.state != "delivered"
        ]
        for d in doomed:
            del state.deliveries[d.id]
        state.finish_messages({d.seq for d in doomed}, now)

    async def rotate_secret(
        self, subscription_id: int, secret: str, *, now: float, overlap_seconds: float
    ) -> bool:
        state = self._s()
        record = state.active_subscription(subscription_id)
        if record is None:
            return False
        record.previous_secret, record.secret = record.secret, secret
        record.previous_secret_until = now + overlap_seconds
        state.catalog_changed(self)
        return True

    async def remove_connection(self, connection_id: int, now: float) -> Connection | None:
        state = self._s()
        connection = await self.connection(connection_id)
        if connection is None:
            return None
        state.disconnected.add(connection_id)
        state.catalog_changed(self)
        record = state.active_subscription(connection_id)
        if connection.mode is Mode.RECEIVE and record is not None:
            self._end_subscription(record, now)
        return connection

    async def connection(self, connection_id: int) -> Connection | None:
        state = self._s()
        if connection_id in state.disconnected:
            return None
        return state.connections.get(connection_id)

    async def connections(self) -> list[Connection]:
        state = self._s()
        return [c for c in state.connections.values() if c.id not in state.disconnected]

    # API keys.

    async def add_key(self, key: ApiKey) -> None:
        state = self._s()
        if key.id in state.keys:
            raise Conflict(f"an API key with the id {key.id!r} exists")
        state.keys[key.id] = KeyRecord(key)
        state.catalog_changed(self)

    async def keys(self) -> list[ApiKey]:
        kept = [k.key for k in self._s().keys.values() if k.revoked_at is None]
        return sorted(kept, key=lambda k: (k.created_at, k.id))

    async def revoke_key(self, key_id: str, now: float) -> bool:
        state = self._s()
        found = state.keys.get(key_id)
        if found is None or found.revoked_at is not None:
            return False
        found.revoked_at = now
        state.catalog_changed(self)
        return True
