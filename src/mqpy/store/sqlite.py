"""The embedded store: SQLite in WAL mode, every write through one group-commit thread.

One broker uses a data directory at a time: it holds a lock file, which is what lets
it release leases left behind by a crashed predecessor at start. That broker is one
process, or a group of them started by `mqpy serve --processes N`: then the supervisor
holds the lock and releases old leases before the group starts (`prepare_group`), and
each process takes turns at the file, one transaction at a time, and reads at the start
of each what the others changed (`SQLiteStore._begin`).
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import logging
import os
import sqlite3
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from mqpy.model.domain import (
    ApiKey,
    BrokerStats,
    Claim,
    ClaimedDelivery,
    ClaimOffer,
    Connection,
    DeadLetter,
    Filter,
    Mode,
    NewMessage,
    NodeInfo,
    Page,
    Published,
    ReceiverHealth,
    Role,
    SeekResult,
    StartAt,
    StoredMessage,
    Subscription,
    SubscriptionChanges,
    SubscriptionSpec,
    TopicInfo,
    int_cursor,
    name_cursor,
)
from mqpy.model.errors import BacklogFull, StoreLocked, StoreUnavailable
from mqpy.model.events import subscription_disabled, subscription_resumed
from mqpy.model.ids import new_connection_id, node_name
from mqpy.model.topics import is_pattern
from mqpy.store.base import Store, TopicBacklog
from mqpy.store.batching import Settlement
from mqpy.store.claim_offers import ClaimOffers, PublishedDeliveries
from mqpy.store.expiry import EXPIRE_CHUNK, ExpiryTarget, expiry_targets
from mqpy.store.health import (
    HEALTH_COLUMNS,
    health_from_rows,
    health_row,
    load_health_sql,
    save_health_sql,
)
from mqpy.store.history import HISTORY_COLUMNS, histories
from mqpy.store.replay import target_of
from mqpy.store.routes import (
    GROUP_ROUTE_COLUMNS,
    SUBSCRIPTION_ROUTE_COLUMNS,
    Routes,
    RouteTable,
    Target,
    build_routes,
)
from mqpy.store.rows import (
    DEAD_LETTER_QUERY,
    DELIVERY_STATUS_COLUMNS,
    SUBSCRIPTION_COLUMNS,
    SUBSCRIPTIONS_FROM,
    changed_spec,
    dead_letter_cursor,
    dead_letter_page,
    delivery_status,
    dump_filter,
    dump_settings,
    group_filter_conflict,
    load_attributes,
    shared_filter_conflict,
    subscription_from_row,
)
from mqpy.store.sqlite_claim import claim as claim_due
from mqpy.store.sqlite_claim import leased as leased_due
from mqpy.store.sqlite_events import EventWriter
from mqpy.store.sqlite_publish import PublishBuffer
from mqpy.store.sqlite_replay import seek as seek_target
from mqpy.store.sqlite_replay import start as start_target
from mqpy.store.sqlite_schema import migrate
from mqpy.store.sqlite_settle import SettlementQueue, finish_messages
from mqpy.store.sqlite_tallies import Tallies
from mqpy.store.sqlite_wake import CATALOG, DUE, group_wake
from mqpy.store.sqlite_writer import GroupCommitWriter, WriterClosed
from mqpy.store.subscription_rows import (
    NEW_SUBSCRIPTION_COLUMNS,
    SubscriptionPager,
    new_subscription_values,
)

log = logging.getLogger("mqpy.store")

DATABASE_FILE = "mqpy.sqlite3"
# Delivered messages (and expired idempotency keys) forgotten per writer transaction.
SWEEP_CHUNK = 500
LOCK_FILE = "mqpy.lock"
# Processes of one group hold this one around each transaction (GroupCommitWriter).
WRITE_LOCK_FILE = "mqpy.write-lock"
# After a failed write, the store is ready again only with this much free disk: a
# full disk still takes a small write into the WAL's spare room, not a publish.
READY_FREE_BYTES = 1 << 20


def _configure(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA journal_mode = WAL")
    # FULL: a commit is on disk (WAL fsynced) before /send answers 200.
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA busy_timeout = 5000")
    migrate(conn)


class SQLiteStore(Store):
    """The `Store` interface on one SQLite file under a data directory."""

    background_acks = True  # acks and claims share the writer's transactions

    def __init__(
        self,
        data_dir: Path,
        *,
        group_lock: int | None = None,
        member: tuple[int, int] | None = None,
    ) -> None:
        """`group_lock`: for one process of a group, the descriptor of the data
        directory's lock file that the group's supervisor holds (`prepare_group`);
        `member`: which of the group's processes this one is, and how many there are
        (slot, count), so that it can wake the others (`sqlite_wake.py`)."""
        self.data_dir = data_dir
        self.path = data_dir / DATABASE_FILE
        self.node = node_name()
        self._group_lock = group_lock
        self._writer = GroupCommitWriter(
            self.path,
            _configure,
            shared_lock=None if group_lock is None else data_dir / WRITE_LOCK_FILE,
        )
        self._routes = RouteTable()
        self._tallies = Tallies()
        # The broker's own events, published in the operations that make them.
        self._events = EventWriter(self._routes_in, self._tallies)
        # Acks, retries and dead letters waiting for the writer are recorded together.
        self._settlements = SettlementQueue(self._writer, self._tallies, self._events)
        # New messages and their deliveries are written together (sqlite_publish.py).
        self._publishing = PublishBuffer()
        # A dispatcher's claim, run inside the next transaction that publishes.
        self._offers = ClaimOffers(self._claim_offered)
        self._writer.before_commit = self._before_commit
        self._writer.on_rollback = self._rolled_back
        self._writer.harmless_write = _probe_write
        if group_lock is not None:
            self._writer.after_begin = self._begin
        # The other processes of a group, woken after commits that concern them.
        self._peers = (
            None if group_lock is None or member is None else group_wake(group_lock, *member)
        )
        self._writer.flush_buffered = self._flush_publishes
        self._writer.on_commit = self._committed
        self._on_commit: Callable[[int, float], None] | None = None
        # Since the last commit (in the writer's thread): publishes written, and
        # connections, subscriptions or keys changed by this process.
        self._published = False
        self._catalog_moved = False
        self._lock_file: IO[str] | None = None
        self._catalog_version = 0
        # A process on its own keeps the list of nodes (itself) in memory; a group's
        # processes keep it in the file.
        self._nodes: dict[str, NodeInfo] = {}

    def _rolled_back(self, whole_transaction: bool) -> None:
        """The writer's on_rollback: memory that mirrors the transaction is void."""
        self._tallies.rolled_back(whole_transaction)
        if whole_transaction:
            self._publishing.clear()
            self._offers.rolled_back()
            self._published = self._catalog_moved = False

    @property
    def shared(self) -> bool:
        """Whether other processes of a group share the file."""
        return self._group_lock is not None

    def _catalog_changed(self, conn: sqlite3.Connection) -> None:
        """Connections, subscriptions or keys changed: routes are stale, here and in
        any other process sharing the file (see `_begin`)."""
        self._routes.invalidate()
        conn.execute("UPDATE counters SET value = value + 1 WHERE name = 'catalog'")
        self._catalog_version += 1
        self._catalog_moved = True

    def _begin(self, conn: sqlite3.Connection) -> None:
        """The writer's `after_begin` in a group of processes: what this process keeps
        in memory of the file (routes, the stored-message count) may have been changed
        by another since this process's last transaction."""
        self._tallies.forget()
        version = _catalog_version(conn)
        if version != self._catalog_version:
            self._routes.invalidate()
            self._catalog_version = version

    def _routes_in(self, conn: sqlite3.Connection) -> Routes:
        return self._routes.get(lambda: _load_routes(conn))

    @property
    def writer(self) -> GroupCommitWriter:
        """The group-commit writer, for batch-size figures."""
        return self._writer

    def observe_commits(self, callback: Callable[[int, float], None]) -> None:
        self._on_commit = callback

    def watch(self, on_due: Callable[[], None], on_catalog: Callable[[], None]) -> None:
        if self._peers is not None:
            self._peers.start(on_due, on_catalog)

    def _flush_publishes(self, conn: sqlite3.Connection) -> None:
        """The writer's flush_buffered: publishes written now make deliveries due."""
        self._published = self._publishing.flush(conn) or self._published

    def _before_commit(self, conn: sqlite3.Connection) -> None:
        """The writer's before_commit: the claim offered to publishes, then the
        counters every operation of the transaction added to."""
        self._offers.claim(conn)
        self._tallies.flush(conn)

    def _claim_offered(self, conn: sqlite3.Connection, offer: ClaimOffer) -> Claim:
        return claim_due(
            conn,
            self._routes_in(conn),
            limit=offer.limit,
            now=offer.clock(),
            lease_seconds=offer.lease_seconds,
            per_subscription_limit=offer.per_subscription_limit,
            busy=offer.busy,
        )

    def _committed(self, operations: int, seconds: float) -> None:
        """The writer's on_commit (its thread): wake the group's other processes if the
        transaction gave them something to do (not what its own claim took), and tell
        the observer."""
        claimed = self._offers.committed()
        if self._peers is not None:
            if self._catalog_moved:
                self._peers.tell(CATALOG)
            elif self._published and not claimed:
                self._peers.tell(DUE)
        self._published = self._catalog_moved = False
        if self._on_commit is not None:
            self._on_commit(operations, seconds)

    def _tell_due(self) -> None:
        """Deliveries became due outside a publish (redrive, seek, release)."""
        if self._peers is not None:
            self._peers.tell(DUE)

    async def open(self) -> None:
        # Message bodies and receivers' signing secrets live here: owner only. SQLite
        # gives its -wal and -shm files the database file's permissions.
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        if self._group_lock is not None:
            # The supervisor holds the lock for the group and released old leases.
            _check_group_lock(self.data_dir, self._group_lock)
            await self._writer.start()
            return
        self._lock_file = _lock_data_dir(self.data_dir)
        try:
            await self._writer.start()
            await self._release_orphaned_leases()
        except BaseException:
            self._unlock()
            raise

    async def _release_orphaned_leases(self) -> None:
        try:
            await self._writer.run(_release_orphaned_leases)
        except StoreUnavailable as exc:
            # A write on a full disk: exiting would only be restarted into the same
            # failure for ever. The leases run out on their own, and until the store
            # can write, publishes answer 503 and readiness says why.
            log.error(
                "cannot release the claims of the process that ran before: %s; starting "
                "anyway (its deliveries are due again once their leases expire)",
                exc,
            )

    async def close(self) -> None:
        await self._writer.stop()
        if self._peers is not None:
            self._peers.close()
        self._unlock()

    def _unlock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

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
        def operation(conn: sqlite3.Connection) -> Connection:
            self._catalog_changed(conn)
            connection_id = _new_id(conn)
            conn.execute(
                "INSERT INTO connections (id, mode, client_url, topic, connected_at, key_id) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (connection_id, mode.value, client_url, topic, now, key_id),
            )
            if mode is Mode.RECEIVE:
                spec = SubscriptionSpec(url=client_url, topic=topic, group=group, filter=filter)
                self._insert_subscription(
                    conn, connection_id, spec, now, key_id, secret, connection_id, start_at
                )
            return Connection(connection_id, mode, client_url, topic, now, key_id)

        return await self._writer.run(operation)

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
        def operation(conn: sqlite3.Connection) -> Subscription:
            subscription_id = _new_id(conn)
            self._insert_subscription(
                conn, subscription_id, spec, now, key_id, secret, None, start_at
            )
            if paused:
                conn.execute("UPDATE subscriptions SET paused = 1 WHERE id = ?", (subscription_id,))
            subscription = _subscription(conn, subscription_id)
            assert subscription is not None
            return subscription

        return await self._writer.run(operation)

    def _insert_subscription(
        self,
        conn: sqlite3.Connection,
        subscription_id: int,
        spec: SubscriptionSpec,
        now: float,
        key_id: str | None,
        secret: str | None,
        connection_id: int | None,
        start_at: StartAt,
    ) -> None:
        self._catalog_changed(conn)
        group_id = None
        new_target = True
        if spec.group is not None:
            group_id, new_target = _join_group(conn, spec, now)
        conn.execute(
            f"INSERT INTO subscriptions ({NEW_SUBSCRIPTION_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            new_subscription_values(
                subscription_id,
                spec,
                now,
                secret=secret,
                group_id=group_id,
                key_id=key_id,
                connection_id=connection_id,
            ),
        )
        if not is_pattern(spec.topic):
            conn.execute(
                "INSERT OR IGNORE INTO topics (name, first_seen) VALUES (?, ?)", (spec.topic, now)
            )
        if new_target and start_at is not None:
            # A member joining a group that exists takes the group's place instead.
            target = Target(
                spec.topic,
                spec.filter,
                None if group_id is not None else subscription_id,
                group_id,
            )
            _, stored = start_target(conn, target, start_at, now)
            self._tallies.add_stored(stored)

    async def seek(self, subscription_id: int, time: float, now: float) -> SeekResult | None:
        def operation(conn: sqlite3.Connection) -> SeekResult | None:
            target = target_of(self._routes_in(conn), subscription_id)
            if target is None:
                return None
            result, stored = seek_target(conn, target, time, now)
            self._tallies.add_stored(stored)
            return result

        found = await self._writer.run(operation)
        if found is not None and found.due:
            self._tell_due()
        return found

    async def subscription(self, subscription_id: int) -> Subscription | None:
        return await self._writer.run(lambda conn: _subscription(conn, subscription_id))

    async def subscriptions(
        self, *, topic: str | None = None, cursor: str | None = None, limit: int = 100
    ) -> Page[Subscription]:
        after = int_cursor(cursor)

        def operation(conn: sqlite3.Connection) -> Page[Subscription]:
            pager = SubscriptionPager(topic, after, limit)
            while pager.wants_more():
                pager.take(
                    conn.execute(
                        f"SELECT {SUBSCRIPTION_COLUMNS} FROM {SUBSCRIPTIONS_FROM} "
                        "WHERE s.active = 1 AND s.id > ? ORDER BY s.id LIMIT ?",
                        (pager.after, pager.chunk),
                    ).fetchall()
                )
            return pager.page()

        return await self._writer.run(operation)

    async def update_subscription(
        self, subscription_id: int, changes: SubscriptionChanges
    ) -> Subscription | None:
        def operation(conn: sqlite3.Connection) -> Subscription | None:
            current = _subscription(conn, subscription_id)
            if current is None:
                return None
            spec = changed_spec(current.spec, changes)
            if spec.filter != current.spec.filter and spec.group is not None:
                _change_group_filter(conn, subscription_id, spec)
            self._catalog_changed(conn)
            conn.execute(
                "UPDATE subscriptions SET url = ?, filter = ?, settings = ? WHERE id = ?",
                (spec.url, dump_filter(spec.filter), dump_settings(spec), subscription_id),
            )
            if current.connection_id is not None:
                conn.execute(
                    "UPDATE connections SET client_url = ? WHERE id = ?",
                    (spec.url, current.connection_id),
                )
            return _subscription(conn, subscription_id)

        return await self._writer.run(operation)

    async def set_paused(self, subscription_id: int, paused: bool) -> Subscription | None:
        def operation(conn: sqlite3.Connection) -> Subscription | None:
            self._catalog_changed(conn)
            conn.execute(
                "UPDATE subscriptions SET paused = ? WHERE id = ? AND active = 1",
                (int(paused), subscription_id),
            )
            return _subscription(conn, subscription_id)

        return await self._writer.run(operation)

    async def resume(self, subscription_id: int, now: float) -> Subscription | None:
        def operation(conn: sqlite3.Connection) -> Subscription | None:
            current = _subscription(conn, subscription_id)
            if current is None:
                return None
            self._catalog_changed(conn)
            conn.execute(_RESUME, (subscription_id,))
            resumed = _subscription(conn, subscription_id)
            assert resumed is not None
            if current.disabled is not None:
                event = subscription_resumed(resumed, now, current.disabled.at)
                self._events.publish(conn, [event], now)
            return resumed

        return await self._writer.run(operation)

    async def failing_subscriptions(self) -> list[Subscription]:
        def operation(conn: sqlite3.Connection) -> list[Subscription]:
            rows = conn.execute(
                f"SELECT {SUBSCRIPTION_COLUMNS} FROM {SUBSCRIPTIONS_FROM} WHERE {_FAILING} "
                "ORDER BY s.id"
            )
            return [subscription_from_row(row) for row in rows]

        return await self._writer.run(operation, durable=False)

    async def disable_subscription(
        self, subscription_id: int, *, failing_since: float, now: float, reason: str
    ) -> Subscription | None:
        def operation(conn: sqlite3.Connection) -> Subscription | None:
            disabled = conn.execute(
                f"UPDATE subscriptions AS s SET disabled_at = ?, disabled_reason = ? "
                f"WHERE s.id = ? AND s.failing_since = ? AND {_FAILING}",
                (now, reason, subscription_id, failing_since),
            ).rowcount
            if not disabled:
                return None
            self._catalog_changed(conn)
            subscription = _subscription(conn, subscription_id)
            assert subscription is not None
            self._events.publish(conn, [subscription_disabled(subscription)], now)
            return subscription

        return await self._writer.run(operation)

    async def remove_subscription(self, subscription_id: int, now: float) -> Subscription | None:
        def operation(conn: sqlite3.Connection) -> Subscription | None:
            subscription = _subscription(conn, subscription_id)
            if subscription is None:
                return None
            if subscription.connection_id is not None:
                conn.execute(
                    "UPDATE connections SET disconnected_at = ? "
                    "WHERE id = ? AND disconnected_at IS NULL",
                    (now, subscription.connection_id),
                )
            self._end_subscription(conn, subscription_id, now)
            return subscription

        return await self._writer.run(operation)

    async def rotate_secret(
        self, subscription_id: int, secret: str, *, now: float, overlap_seconds: float
    ) -> bool:
        def operation(conn: sqlite3.Connection) -> bool:
            self._catalog_changed(conn)
            changed = conn.execute(
                "UPDATE subscriptions SET previous_secret = secret, "
                "previous_secret_until = ?, secret = ? WHERE id = ? AND active = 1",
                (now + overlap_seconds, secret, subscription_id),
            ).rowcount
            return changed > 0

        return await self._writer.run(operation)

    async def remove_connection(self, connection_id: int, now: float) -> Connection | None:
        def operation(conn: sqlite3.Connection) -> Connection | None:
            row = conn.execute(
                f"SELECT {_CONNECTION_COLUMNS} FROM connections "
                "WHERE id = ? AND disconnected_at IS NULL",
                (connection_id,),
            ).fetchone()
            if row is None:
                return None
            self._catalog_changed(conn)
            conn.execute(
                "UPDATE connections SET disconnected_at = ? WHERE id = ?", (now, connection_id)
            )
            connection = _connection(row)
            if connection.mode is Mode.RECEIVE:
                self._end_subscription(conn, connection_id, now)
            return connection

        return await self._writer.run(operation)

    def _end_subscription(self, conn: sqlite3.Connection, subscription_id: int, now: float) -> None:
        self._catalog_changed(conn)
        row = conn.execute(
            "UPDATE subscriptions SET active = 0 WHERE id = ? AND active = 1 RETURNING group_id",
            (subscription_id,),
        ).fetchone()
        if row is None:
            return
        group_id = row[0]
        if group_id is not None:
            others = conn.execute(
                "SELECT COUNT(*) FROM subscriptions WHERE group_id = ? AND active = 1",
                (group_id,),
            ).fetchone()[0]
            if others:
                # The group's work stays for the other members; what this member held
                # is due again now rather than when its lease would run out.
                conn.execute(
                    "UPDATE deliveries SET lease = NULL, due_at = ? WHERE group_id = ? "
                    "AND subscription_id = ? AND state = 'pending' AND lease IS NOT NULL",
                    (now, group_id, subscription_id),
                )
                return
            conn.execute("UPDATE groups SET active = 0 WHERE id = ?", (group_id,))
            doomed = "group_id = ?"
            key: int = group_id
        else:
            doomed = "subscription_id = ? AND group_id IS NULL"
            key = subscription_id
        # Dead letters go too: nothing could redrive them to a receiver that is gone.
        # Delivered rows stay, as the message's history, until the message is swept.
        seqs = conn.execute(
            f"DELETE FROM deliveries WHERE {doomed} AND state != 'delivered' RETURNING message_seq",
            (key,),
        ).fetchall()
        self._tallies.add_stored(-finish_messages(conn, {seq for (seq,) in seqs}, now))

    async def connection(self, connection_id: int) -> Connection | None:
        def operation(conn: sqlite3.Connection) -> Connection | None:
            row = conn.execute(
                f"SELECT {_CONNECTION_COLUMNS} FROM connections "
                "WHERE id = ? AND disconnected_at IS NULL",
                (connection_id,),
            ).fetchone()
            return None if row is None else _connection(row)

        return await self._writer.run(operation)

    async def catalog_version(self) -> int:
        if not self.shared:
            return self._catalog_version  # every change went through this process
        return await self._writer.run(_catalog_version, durable=False)

    async def heartbeat(self, node: NodeInfo) -> None:
        if not self.shared:
            self._nodes[node.name] = node
            return
        await self._writer.run(functools.partial(_heartbeat, node=node), durable=False)

    async def nodes(self, *, seen_since: float) -> list[NodeInfo]:
        if not self.shared:
            return sorted(
                (n for n in self._nodes.values() if n.seen_at >= seen_since),
                key=lambda n: n.name,
            )
        rows = await self._writer.run(
            lambda conn: conn.execute(
                f"SELECT {_NODE_COLUMNS} FROM nodes WHERE seen_at >= ? ORDER BY name",
                (seen_since,),
            ).fetchall(),
            durable=False,
        )
        return [NodeInfo(*row) for row in rows]

    async def save_receiver_health(self, health: Sequence[ReceiverHealth]) -> None:
        rows = [health_row(h) for h in health]

        def operation(conn: sqlite3.Connection) -> None:
            conn.executemany(_SAVE_HEALTH, rows)

        # Not durable: a crash loses at most the last few seconds of health.
        await self._writer.run(operation, durable=False)

    async def receiver_health(self) -> list[ReceiverHealth]:
        return await self._writer.run(
            lambda conn: health_from_rows(conn.execute(load_health_sql("1")))
        )

    async def connections(self) -> list[Connection]:
        def operation(conn: sqlite3.Connection) -> list[Connection]:
            rows = conn.execute(
                f"SELECT {_CONNECTION_COLUMNS} FROM connections WHERE disconnected_at IS NULL"
            ).fetchall()
            return [_connection(row) for row in rows]

        return await self._writer.run(operation)

    async def publish(
        self,
        messages: Sequence[NewMessage],
        *,
        max_backlog: int = 0,
        dedup_since: float = 0.0,
    ) -> list[Published]:
        transaction: list[PublishedDeliveries] = []  # the one this publish went into

        def operation(conn: sqlite3.Connection) -> list[Published]:
            tallies = self._tallies
            if max_backlog > 0 and tallies.stored(conn) + len(messages) > max_backlog:
                raise BacklogFull(
                    f"the broker holds {max_backlog} undelivered messages, its --max-backlog"
                )
            routes = self._routes_in(conn)
            made = self._offers.transaction
            published = self._publishing.publish(conn, routes, messages, dedup_since, made)
            transaction.append(made)
            fresh = [m for m, p in zip(messages, published, strict=True) if not p.duplicate]
            # Only those some subscription took wait for delivery; the others are done.
            tallies.add_stored(sum(1 for p in published if p.deliveries and not p.duplicate))
            for topic, (count, first) in _by_topic(fresh).items():
                tallies.published(topic, count, first)
            return published

        published = await self._writer.run(operation, buffered=True)
        if transaction and transaction[0].claimed:
            return [Published(p.id, p.duplicate, p.deliveries, claimed=True) for p in published]
        return published

    def offer_claim(self, offer: ClaimOffer, answer: Callable[[Claim | None], None]) -> bool:
        self._offers.offer(offer, answer)
        return True

    def withdraw_claim(self) -> bool:
        return self._offers.withdraw()

    async def message(self, message_id: str, now: float) -> StoredMessage | None:
        return await self._writer.run(lambda conn: _stored_message(conn, message_id, now))

    async def sweep(self, *, delivered_before: float, dedup_before: float) -> int:
        def operation(conn: sqlite3.Connection) -> tuple[int, int]:
            seqs = [
                (seq,)
                for (seq,) in conn.execute(
                    "SELECT seq FROM messages WHERE done_at IS NOT NULL AND done_at < ? LIMIT ?",
                    (delivered_before, SWEEP_CHUNK),
                )
            ]
            conn.executemany("DELETE FROM deliveries WHERE message_seq = ?", seqs)
            conn.executemany("DELETE FROM delivery_attempts WHERE message_seq = ?", seqs)
            conn.executemany("DELETE FROM messages WHERE seq = ?", seqs)
            keys = conn.execute(
                "DELETE FROM idempotency_keys WHERE rowid IN (SELECT rowid FROM "
                "idempotency_keys WHERE created_at < ? LIMIT ?)",
                (dedup_before, SWEEP_CHUNK),
            ).rowcount
            return len(seqs), keys

        # Each chunk is its own writer operation, so publishes and acks queued meanwhile
        # go in between: a chunk of 5,000 held the writer for 70-90 ms, one of 500 for
        # 8 ms on average and 18 ms at most (sweeping 100,000 delivered messages).
        removed = 0
        while True:
            messages, keys = await self._writer.run(operation, durable=False)
            removed += messages
            if messages < SWEEP_CHUNK and keys < SWEEP_CHUNK:
                return removed

    async def expire(self, *, now: float, max_age: float) -> int:
        targets = await self._writer.run(
            lambda conn: expiry_targets(self._routes_in(conn), now=now, max_age=max_age),
            durable=False,
        )
        expired = 0
        for target in targets:
            while True:
                # Chunk by chunk, each its own writer operation, as in `sweep`.
                count = await self._writer.run(
                    functools.partial(self._expire, target=target, now=now), durable=False
                )
                expired += count
                if count < EXPIRE_CHUNK:
                    break
        return expired

    def _expire(self, conn: sqlite3.Connection, target: ExpiryTarget, now: float) -> int:
        expired = _expire(conn, target, now)
        self._events.expired(conn, expired, target.error, now)  # last: it counts on tallies
        return len(expired)

    async def claim(
        self,
        *,
        limit: int,
        now: float,
        lease_seconds: float,
        per_subscription_limit: int,
        busy: Mapping[int, int],
        for_subscription: int | None = None,
    ) -> Claim:
        def operation(conn: sqlite3.Connection) -> Claim:
            return claim_due(
                conn,
                self._routes_in(conn),
                limit=limit,
                now=now,
                lease_seconds=lease_seconds,
                per_subscription_limit=per_subscription_limit,
                busy=busy,
                for_subscription=for_subscription,
            )

        ran, claimed = self._writer.run_now(operation)
        if ran:
            assert claimed is not None
            return claimed
        return await self._writer.run(operation, durable=False)

    async def _settle(self, settlement: Settlement) -> None:
        await self._settlements.submit(settlement)

    def _settle_soon(self, settlement: Settlement) -> asyncio.Future[None]:
        # No task per delivery: the settlement's own future, settled by the writer.
        return self._settlements.submit_nowait(settlement)

    async def leased(
        self, subscription_id: int, leases: Collection[tuple[int, str]], *, now: float
    ) -> list[ClaimedDelivery]:
        return await self._writer.run(
            lambda conn: leased_due(conn, self._routes_in(conn), subscription_id, leases, now)
        )

    async def renew(
        self, deliveries: Sequence[ClaimedDelivery], *, now: float, lease_seconds: float
    ) -> list[int]:
        def operation(conn: sqlite3.Connection) -> list[int]:
            return [
                d.delivery_id
                for d in deliveries
                if conn.execute(
                    "UPDATE deliveries SET due_at = ? WHERE id = ? AND lease = ? "
                    "AND state = 'pending'",
                    (now + lease_seconds, d.delivery_id, d.lease),
                ).rowcount
                == 0
            ]

        return await self._writer.run(operation, durable=False)

    async def release(
        self, deliveries: Sequence[ClaimedDelivery], now: float, *, attempted: bool = False
    ) -> None:
        undone = 0 if attempted else 1
        params = [(now, undone, d.delivery_id, d.lease) for d in deliveries]
        await self._writer.run(
            lambda conn: conn.executemany(
                "UPDATE deliveries SET due_at = ?, lease = NULL, attempts = attempts - ? "
                "WHERE id = ? AND lease = ?",
                params,
            ),
            durable=False,
        )
        self._tell_due()  # a process stopping: the others take them over now

    async def add_key(self, key: ApiKey) -> None:
        def operation(conn: sqlite3.Connection) -> None:
            self._catalog_changed(conn)
            conn.execute(
                "INSERT INTO api_keys (id, role, topics, secret_hash, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (key.id, key.role.value, "\n".join(key.topics), key.secret_hash, key.created_at),
            )

        await self._writer.run(operation)

    async def keys(self) -> list[ApiKey]:
        def operation(conn: sqlite3.Connection) -> list[ApiKey]:
            rows = conn.execute(
                "SELECT id, role, topics, secret_hash, created_at FROM api_keys "
                "WHERE revoked_at IS NULL ORDER BY created_at, id"
            ).fetchall()
            return [
                ApiKey(key_id, Role(role), tuple(filter(None, topics.split("\n"))), hashed, at)
                for key_id, role, topics, hashed, at in rows
            ]

        return await self._writer.run(operation)

    async def revoke_key(self, key_id: str, now: float) -> bool:
        def operation(conn: sqlite3.Connection) -> bool:
            self._catalog_changed(conn)
            return (
                conn.execute(
                    "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                    (now, key_id),
                ).rowcount
                > 0
            )

        return await self._writer.run(operation)

    async def dead_letters(
        self, *, subscription_id: int | None = None, cursor: str | None = None, limit: int = 100
    ) -> Page[DeadLetter]:
        after = dead_letter_cursor(cursor)

        def operation(conn: sqlite3.Connection) -> Page[DeadLetter]:
            sql = f"{DEAD_LETTER_QUERY} AND (d.dead_at, d.id) > (?, ?)"
            params: list[Any] = list(after)
            if subscription_id is not None:
                sql += " AND d.subscription_id = ?"
                params.append(subscription_id)
            sql += " ORDER BY d.dead_at, d.id LIMIT ?"
            params.append(limit + 1)
            return dead_letter_page(conn.execute(sql, params).fetchall(), limit)

        return await self._writer.run(operation)

    async def redrive(
        self, now: float, receiver_id: int | None = None, *, message_id: str | None = None
    ) -> int:
        def operation(conn: sqlite3.Connection) -> int:
            sql = (
                "UPDATE deliveries SET state = 'pending', attempts = 0, due_at = ?, "
                "dead_at = NULL, lease = NULL WHERE state = 'dead' AND ("
                "(group_id IS NULL AND subscription_id IN "
                "(SELECT id FROM subscriptions WHERE active = 1)) OR "
                "group_id IN (SELECT id FROM groups WHERE active = 1))"
            )
            where, params = _dead_letters_of(receiver_id, message_id)
            return conn.execute(sql + where, (now, *params)).rowcount

        count = await self._writer.run(operation)
        if count:
            self._tell_due()
        return count

    async def purge_dead_letters(
        self,
        subscription_id: int | None = None,
        *,
        now: float,
        message_id: str | None = None,
    ) -> int:
        def operation(conn: sqlite3.Connection) -> int:
            where, params = _dead_letters_of(subscription_id, message_id)
            seqs = conn.execute(
                f"DELETE FROM deliveries WHERE state = 'dead'{where} RETURNING message_seq",
                params,
            ).fetchall()
            self._tallies.add_stored(-finish_messages(conn, {seq for (seq,) in seqs}, now))
            return len(seqs)

        return await self._writer.run(operation)

    async def topics(self, *, cursor: str | None = None, limit: int = 100) -> Page[TopicInfo]:
        after = name_cursor(cursor)

        def operation(conn: sqlite3.Connection) -> Page[TopicInfo]:
            names = [
                name
                for (name,) in conn.execute(
                    "SELECT name FROM topics WHERE name > ? ORDER BY name LIMIT ?",
                    (after, limit + 1),
                )
            ]
            page = [self._topic_info(conn, name) for name in names[:limit]]
            more = len(names) > limit
            return Page([t for t in page if t is not None], names[limit - 1] if more else None)

        return await self._writer.run(operation)

    async def topic(self, name: str) -> TopicInfo | None:
        return await self._writer.run(lambda conn: self._topic_info(conn, name))

    def _topic_info(self, conn: sqlite3.Connection, name: str) -> TopicInfo | None:
        row = conn.execute("SELECT published FROM topics WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        backlog, oldest = conn.execute(
            "SELECT COUNT(*), MIN(published_at) FROM messages m WHERE topic = ? "
            f"AND done_at IS NULL AND ({_PENDING})",
            (name,),
        ).fetchone()
        routes = self._routes_in(conn)
        subscriptions = routes.subscriptions_on(name)
        return TopicInfo(name, row[0], backlog, oldest, subscriptions)

    async def stats(self) -> BrokerStats:
        def operation(conn: sqlite3.Connection) -> BrokerStats:
            by_mode = dict(
                conn.execute(
                    "SELECT mode, COUNT(*) FROM connections WHERE disconnected_at IS NULL "
                    "GROUP BY mode"
                ).fetchall()
            )
            pending = conn.execute(
                "SELECT COUNT(*) FROM deliveries WHERE state = 'pending'"
            ).fetchone()[0]
            delivered = conn.execute(
                "SELECT value FROM counters WHERE name = 'delivered'"
            ).fetchone()[0]
            return BrokerStats(
                receivers=by_mode.get(Mode.RECEIVE.value, 0),
                senders=by_mode.get(Mode.SEND.value, 0),
                queue_length=pending,
                completed=delivered,
            )

        return await self._writer.run(operation)

    async def ping(self) -> None:
        # Through the writer, as a publish goes: a wedged writer means not ready. After
        # a failed write (a full disk fails writes while reads still succeed), a small
        # write instead: only one that succeeds makes the store ready again, and a
        # broker taken out of service gets no publish that could do it.
        failed = self._writer.write_failure
        if failed is not None:
            free = _free_bytes(self.data_dir)
            if free < READY_FREE_BYTES:
                raise StoreUnavailable(
                    f"the store cannot write: {failed}; {free} bytes free on the disk "
                    f"holding {self.data_dir}"
                )
        try:
            await self._writer.run(_ping if failed is None else _probe_write)
        except WriterClosed:
            raise StoreUnavailable("the store is closed") from None
        except StoreUnavailable:
            pass  # the reason is the writer's, reported below
        failed = self._writer.write_failure
        if failed is not None:
            raise StoreUnavailable(f"the store cannot write: {failed}")

    async def topic_backlogs(self) -> list[TopicBacklog]:
        rows = await self._read(
            "SELECT topic, COUNT(*), MIN(published_at) FROM messages m WHERE "
            f"{_PENDING} GROUP BY topic ORDER BY topic"
        )
        return [TopicBacklog(topic, count, oldest) for topic, count, oldest in rows]

    async def dead_letter_count(self) -> int:
        rows = await self._read("SELECT COUNT(*) FROM deliveries WHERE state = 'dead'")
        return int(rows[0][0])

    async def _read(self, sql: str) -> list[tuple[Any, ...]]:
        """A query for operators' figures, on a read-only connection of its own in a
        worker thread: WAL lets it read beside the writer, so a scan of a large backlog
        never holds up a group commit."""
        return await asyncio.to_thread(_read_only, self.path, sql)


_SAVE_HEALTH = save_health_sql(["?"] * (len(HEALTH_COLUMNS) + 1))
# A push subscription that could be disabled: failing, active, neither paused nor
# disabled already (`s`: the subscriptions table).
_FAILING = (
    "s.failing_since IS NOT NULL AND s.active = 1 AND s.paused = 0 AND s.disabled_at IS NULL "
    "AND s.kind = 'push'"
)
# On again, paused or disabled: a new run of attempts, judged from its own first failure.
_RESUME = (
    "UPDATE subscriptions SET paused = 0, disabled_at = NULL, disabled_reason = NULL, "
    "failing_since = NULL WHERE id = ? AND active = 1"
)


def _dead_letters_of(
    subscription_id: int | None, message_id: str | None
) -> tuple[str, tuple[int | str, ...]]:
    """The WHERE conditions (after `state = 'dead'`) that pick one subscription's dead
    letters, one message's, or both: the one dead letter."""
    where = ""
    params: list[int | str] = []
    if subscription_id is not None:
        where += " AND subscription_id = ?"
        params.append(subscription_id)
    if message_id is not None:
        where += " AND message_seq = (SELECT seq FROM messages WHERE id = ?)"
        params.append(message_id)
    return where, tuple(params)


def _lock_data_dir(data_dir: Path) -> IO[str]:
    lock_file = open(data_dir / LOCK_FILE, "a+")  # noqa: SIM115 - held open while running
    try:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.close()
        raise StoreLocked(
            f"another mq-py process is using {data_dir}; stop it or choose another --data-dir"
        ) from None
    lock_file.seek(0)
    lock_file.truncate()
    lock_file.write(f"{os.getpid()}\n")
    lock_file.flush()
    return lock_file


def prepare_group(data_dir: Path) -> IO[str]:
    """For the supervisor of `mqpy serve --processes N`, before it starts them: take
    the data directory's lock for the whole group, bring the schema up to date, and
    release the leases of the processes that ran before. The returned file holds the
    lock; each process gets its descriptor (`SQLiteStore(group_lock=...)`)."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = data_dir / DATABASE_FILE
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    lock_file = _lock_data_dir(data_dir)
    try:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            _configure(conn)
            conn.execute("BEGIN IMMEDIATE")
            _release_orphaned_leases(conn)
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            # As in `open`: a full disk must not become a crash loop.
            log.error(
                "cannot release the claims of the processes that ran before: %s; starting "
                "anyway (their deliveries are due again once their leases expire)",
                exc,
            )
        finally:
            conn.close()
    except BaseException:
        lock_file.close()
        raise
    return lock_file


def _check_group_lock(data_dir: Path, descriptor: int) -> None:
    """Refuse a descriptor that is not the data directory's lock file."""
    try:
        held = os.fstat(descriptor)
        expected = (data_dir / LOCK_FILE).stat()
    except OSError as exc:
        raise StoreLocked(
            f"the data directory lock handed to this process is not usable: {exc}"
        ) from None
    if (held.st_dev, held.st_ino) != (expected.st_dev, expected.st_ino):
        raise StoreLocked(
            f"the lock handed to this process is not {data_dir / LOCK_FILE}; start the "
            "group with mqpy serve --processes N"
        )


_NODE_COLUMNS = "name, started_at, seen_at, address, held, in_flight"


def _catalog_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT value FROM counters WHERE name = 'catalog'").fetchone()[0])


def _heartbeat(conn: sqlite3.Connection, node: NodeInfo) -> None:
    conn.execute(
        f"INSERT OR REPLACE INTO nodes ({_NODE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
        (node.name, node.started_at, node.seen_at, node.address, node.held, node.in_flight),
    )
    # Processes that stopped a day ago are history no one asks about.
    conn.execute("DELETE FROM nodes WHERE seen_at < ?", (node.seen_at - 86400.0,))


def _read_only(path: Path, sql: str) -> list[tuple[Any, ...]]:
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            return conn.execute(sql).fetchall()
        finally:
            conn.close()
    except sqlite3.OperationalError as exc:
        raise StoreUnavailable(f"the store could not be read: {exc}") from None


# A message some receiver has yet to get: one with a pending delivery (`m` is the
# message). One that no subscription took is done, not backlog.
_PENDING = "EXISTS (SELECT 1 FROM deliveries d WHERE d.message_seq = m.seq AND d.state = 'pending')"


def _load_routes(conn: sqlite3.Connection) -> Routes:
    return build_routes(
        conn.execute(
            f"SELECT {SUBSCRIPTION_ROUTE_COLUMNS} FROM subscriptions WHERE active = 1 ORDER BY id"
        ),
        conn.execute(f"SELECT {GROUP_ROUTE_COLUMNS} FROM groups WHERE active = 1 ORDER BY id"),
    )


_EXPIRE = (
    "UPDATE deliveries SET state = 'dead', dead_at = ?, lease = NULL, last_error = ?, "
    "subscription_id = COALESCE(subscription_id, ?) WHERE id IN (SELECT d.id FROM "
    "deliveries d JOIN messages m ON m.seq = d.message_seq WHERE {target} "
    "AND d.state = 'pending' AND (d.lease IS NULL OR d.due_at <= ?) "
    "AND MAX(m.published_at, COALESCE(m.deliver_at, 0)) < ? LIMIT ?) "
    "RETURNING subscription_id, message_seq, attempts"
)
_EXPIRE_FOR_SUBSCRIPTION = _EXPIRE.format(target="d.subscription_id = ? AND d.group_id IS NULL")
_EXPIRE_FOR_GROUP = _EXPIRE.format(target="d.group_id = ?")


def _expire(
    conn: sqlite3.Connection, target: ExpiryTarget, now: float
) -> list[tuple[int, int, int]]:
    """Dead-letter one chunk; (subscription id, message seq, attempts) of each."""
    grouped = target.group_id is not None
    return conn.execute(
        _EXPIRE_FOR_GROUP if grouped else _EXPIRE_FOR_SUBSCRIPTION,
        (
            now,
            target.error,
            target.subscription_id,
            target.group_id if grouped else target.subscription_id,
            now,
            target.cutoff,
            EXPIRE_CHUNK,
        ),
    ).fetchall()


def _free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def _ping(conn: sqlite3.Connection) -> None:
    conn.execute("SELECT 1 FROM counters").fetchone()


def _probe_write(conn: sqlite3.Connection) -> None:
    # Counts probes in a row of their own: a real page write that changes nothing else.
    # (A row rewritten as it was is no write: SQLite skips a cell whose bytes are equal,
    # and the commit then writes and syncs nothing.)
    conn.execute(
        "INSERT INTO counters (name, value) VALUES ('write-probes', 1) "
        "ON CONFLICT (name) DO UPDATE SET value = value + 1"
    )


def _release_orphaned_leases(conn: sqlite3.Connection) -> None:
    # We hold the data directory's lock, so every lease on record belongs to a process
    # that died: its deliveries are due now rather than when the lease would expire.
    conn.execute(
        "UPDATE deliveries SET due_at = 0, lease = NULL "
        "WHERE state = 'pending' AND lease IS NOT NULL"
    )


def _new_id(conn: sqlite3.Connection) -> int:
    """A random id no connection or subscription ever had. Ids of disconnected clients
    and deleted subscriptions stay in their tables, so an id is never reused."""
    while True:
        candidate = new_connection_id()
        taken = conn.execute(
            "SELECT 1 FROM connections WHERE id = ? UNION ALL "
            "SELECT 1 FROM subscriptions WHERE id = ?",
            (candidate, candidate),
        ).fetchone()
        if taken is None:
            return candidate


def _join_group(conn: sqlite3.Connection, spec: SubscriptionSpec, now: float) -> tuple[int, bool]:
    """The active group this member joins (created if new), and whether it is new."""
    row = conn.execute(
        "SELECT id, filter FROM groups WHERE topic = ? AND name = ? AND active = 1",
        (spec.topic, spec.group),
    ).fetchone()
    wanted = dump_filter(spec.filter)
    if row is None:
        cursor = conn.execute(
            "INSERT INTO groups (topic, name, filter, created_at) VALUES (?, ?, ?, ?)",
            (spec.topic, spec.group, wanted, now),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid, True
    group_id, current = row
    if current != wanted:
        raise group_filter_conflict(spec, current)
    return group_id, False


def _change_group_filter(
    conn: sqlite3.Connection, subscription_id: int, spec: SubscriptionSpec
) -> None:
    group_id, members = conn.execute(
        "SELECT s.group_id, (SELECT COUNT(*) FROM subscriptions o WHERE o.group_id = "
        "s.group_id AND o.active = 1) FROM subscriptions s WHERE s.id = ?",
        (subscription_id,),
    ).fetchone()
    if members > 1:
        raise shared_filter_conflict(subscription_id, spec.group, members)
    conn.execute("UPDATE groups SET filter = ? WHERE id = ?", (dump_filter(spec.filter), group_id))


def _subscription(conn: sqlite3.Connection, subscription_id: int) -> Subscription | None:
    row = conn.execute(
        f"SELECT {SUBSCRIPTION_COLUMNS} FROM {SUBSCRIPTIONS_FROM} WHERE s.id = ? AND s.active = 1",
        (subscription_id,),
    ).fetchone()
    return None if row is None else subscription_from_row(row)


def _stored_message(conn: sqlite3.Connection, message_id: str, now: float) -> StoredMessage | None:
    row = conn.execute(
        "SELECT seq, topic, body, attributes, ordering_key, published_at, deliver_at "
        "FROM messages WHERE id = ?",
        (message_id,),
    ).fetchone()
    if row is None:
        return None
    seq, topic, body, attributes, ordering_key, published_at, deliver_at = row
    kept = histories(
        conn.execute(
            f"SELECT {HISTORY_COLUMNS} FROM delivery_attempts WHERE message_seq = ? "
            "ORDER BY delivery_id, id",
            (seq,),
        )
    )
    deliveries = [
        delivery_status(now, *delivery, history=kept.get(delivery_id, ()))
        for delivery_id, *delivery in conn.execute(
            f"SELECT d.id, {DELIVERY_STATUS_COLUMNS} FROM deliveries d "
            "LEFT JOIN groups g ON g.id = d.group_id WHERE d.message_seq = ? ORDER BY d.id",
            (seq,),
        )
    ]
    return StoredMessage(
        id=message_id,
        topic=topic,
        body=body,
        attributes=load_attributes(attributes),
        ordering_key=ordering_key,
        published_at=published_at,
        deliver_at=deliver_at,
        deliveries=deliveries,
    )


def _by_topic(messages: Sequence[NewMessage]) -> dict[str, tuple[int, float]]:
    """Per topic, how many of `messages` and the earliest publish time: a batch (one
    topic) is counted once, not once per message."""
    counts: dict[str, tuple[int, float]] = {}
    for message in messages:
        count, first = counts.get(message.topic, (0, message.published_at))
        counts[message.topic] = (count + 1, min(first, message.published_at))
    return counts


_CONNECTION_COLUMNS = "id, mode, client_url, topic, connected_at, key_id"


def _connection(row: tuple[int, str, str, str, float, str | None]) -> Connection:
    connection_id, mode, client_url, topic, connected_at, key_id = row
    return Connection(connection_id, Mode(mode), client_url, topic, connected_at, key_id)
