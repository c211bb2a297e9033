"""The embedded store: SQLite in WAL mode, every write through one group-commit thread.

Only this process may use a data directory at a time (it holds a lock file), which is
what lets it release leases left behind by a crashed predecessor at start.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from mqpy.domain import (
    ApiKey,
    BacklogFull,
    BrokerStats,
    Claim,
    Connection,
    DeadLetter,
    Delivery,
    Mode,
    NewMessage,
    Role,
    StoreUnavailable,
)
from mqpy.ids import new_connection_id, new_lease_token
from mqpy.store.base import Store, TopicBacklog
from mqpy.store.sqlite_schema import migrate
from mqpy.store.sqlite_writer import GroupCommitWriter, WriterClosed

DATABASE_FILE = "mqpy.sqlite3"
LOCK_FILE = "mqpy.lock"


class DataDirLocked(RuntimeError):
    """Another mq-py process is using the data directory."""


def _configure(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA journal_mode = WAL")
    # FULL: a commit is on disk (WAL fsynced) before /send answers 200.
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA busy_timeout = 5000")
    migrate(conn)


class SQLiteStore(Store):
    """The `Store` interface on one SQLite file under a data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / DATABASE_FILE
        self._writer = GroupCommitWriter(self.path, _configure)
        self._lock_file: IO[str] | None = None

    @property
    def writer(self) -> GroupCommitWriter:
        """The group-commit writer, for batch-size figures."""
        return self._writer

    async def open(self) -> None:
        # Message bodies and receivers' signing secrets live here: owner only. SQLite
        # gives its -wal and -shm files the database file's permissions.
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        self._lock_file = _lock_data_dir(self.data_dir)
        try:
            await self._writer.start()
            await self._writer.run(_release_orphaned_leases)
        except BaseException:
            self._unlock()
            raise

    async def close(self) -> None:
        await self._writer.stop()
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
    ) -> Connection:
        def operation(conn: sqlite3.Connection) -> Connection:
            connection_id = _insert_connection(conn, mode, client_url, topic, now, key_id)
            if mode is Mode.RECEIVE:
                conn.execute(
                    "INSERT INTO subscriptions (id, topic, url, created_at, secret) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (connection_id, topic, client_url, now, secret),
                )
                _route_waiting_messages(conn, connection_id, topic, now)
            return Connection(connection_id, mode, client_url, topic, now, key_id)

        return await self._writer.run(operation)

    async def rotate_secret(
        self, subscription_id: int, secret: str, *, now: float, overlap_seconds: float
    ) -> bool:
        def operation(conn: sqlite3.Connection) -> bool:
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
            conn.execute(
                "UPDATE connections SET disconnected_at = ? WHERE id = ?", (now, connection_id)
            )
            connection = _connection(row)
            if connection.mode is Mode.RECEIVE:
                _end_subscription(conn, connection_id)
            return connection

        return await self._writer.run(operation)

    async def connections(self) -> list[Connection]:
        def operation(conn: sqlite3.Connection) -> list[Connection]:
            rows = conn.execute(
                f"SELECT {_CONNECTION_COLUMNS} FROM connections WHERE disconnected_at IS NULL"
            ).fetchall()
            return [_connection(row) for row in rows]

        return await self._writer.run(operation)

    async def publish(self, message: NewMessage, *, max_backlog: int = 0) -> int:
        def operation(conn: sqlite3.Connection) -> int:
            if max_backlog > 0 and _stored_messages(conn) >= max_backlog:
                raise BacklogFull(
                    f"the broker holds {max_backlog} undelivered messages, its --max-backlog"
                )
            conn.execute("UPDATE counters SET value = value + 1 WHERE name = 'messages'")
            cursor = conn.execute(
                "INSERT INTO messages (id, topic, body, publisher_id, published_at, routed) "
                "VALUES (?, ?, ?, ?, ?, 1)",
                (
                    message.id,
                    message.topic,
                    message.body,
                    message.publisher_id,
                    message.published_at,
                ),
            )
            seq = cursor.lastrowid
            fanned_out = conn.execute(
                "INSERT INTO deliveries (message_seq, subscription_id, state, due_at) "
                "SELECT ?, id, 'pending', ? FROM subscriptions WHERE topic = ? AND active = 1",
                (seq, message.published_at, message.topic),
            ).rowcount
            if fanned_out == 0:
                conn.execute("UPDATE messages SET routed = 0 WHERE seq = ?", (seq,))
            return fanned_out

        return await self._writer.run(operation)

    async def claim(
        self,
        *,
        limit: int,
        now: float,
        lease_seconds: float,
        per_subscription_limit: int,
        busy: Mapping[int, int],
    ) -> Claim:
        def operation(conn: sqlite3.Connection) -> Claim:
            return _claim(conn, limit, now, lease_seconds, per_subscription_limit, busy)

        return await self._writer.run(operation, durable=False)

    async def ack(self, delivery: Delivery) -> None:
        def operation(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                "DELETE FROM deliveries WHERE id = ? AND lease = ? RETURNING message_seq",
                (delivery.delivery_id, delivery.lease),
            ).fetchone()
            if row is None:
                return  # the lease was lost; whoever holds it now reports the outcome
            conn.execute("UPDATE counters SET value = value + 1 WHERE name = 'delivered'")
            _forget_message_if_done(conn, row[0])

        await self._writer.run(operation, durable=False)

    async def retry(
        self, delivery: Delivery, *, due_at: float, error: str, status: int | None
    ) -> None:
        await self._writer.run(
            lambda conn: conn.execute(
                "UPDATE deliveries SET due_at = ?, lease = NULL, last_error = ?, "
                "last_status = ? WHERE id = ? AND lease = ?",
                (due_at, error, status, delivery.delivery_id, delivery.lease),
            ),
            durable=False,
        )

    async def dead_letter(
        self, delivery: Delivery, *, now: float, error: str, status: int | None
    ) -> None:
        await self._writer.run(
            lambda conn: conn.execute(
                "UPDATE deliveries SET state = 'dead', dead_at = ?, lease = NULL, "
                "last_error = ?, last_status = ? WHERE id = ? AND lease = ?",
                (now, error, status, delivery.delivery_id, delivery.lease),
            ),
            durable=False,
        )

    async def release(self, deliveries: Sequence[Delivery], now: float) -> None:
        params = [(now, d.delivery_id, d.lease) for d in deliveries]
        await self._writer.run(
            lambda conn: conn.executemany(
                "UPDATE deliveries SET due_at = ?, lease = NULL, attempts = attempts - 1 "
                "WHERE id = ? AND lease = ?",
                params,
            ),
            durable=False,
        )

    async def add_key(self, key: ApiKey) -> None:
        await self._writer.run(
            lambda conn: conn.execute(
                "INSERT INTO api_keys (id, role, topics, secret_hash, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (key.id, key.role.value, "\n".join(key.topics), key.secret_hash, key.created_at),
            )
        )

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
            return (
                conn.execute(
                    "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                    (now, key_id),
                ).rowcount
                > 0
            )

        return await self._writer.run(operation)

    async def dead_letters(self, limit: int = 1000) -> list[DeadLetter]:
        def operation(conn: sqlite3.Connection) -> list[DeadLetter]:
            rows = conn.execute(
                "SELECT m.id, d.subscription_id, d.attempts, d.last_error, d.dead_at, m.body "
                "FROM deliveries d JOIN messages m ON m.seq = d.message_seq "
                "WHERE d.state = 'dead' ORDER BY d.dead_at, d.id LIMIT ?",
                (limit,),
            ).fetchall()
            return [DeadLetter(*row) for row in rows]

        return await self._writer.run(operation)

    async def redrive(self, now: float, receiver_id: int | None = None) -> int:
        def operation(conn: sqlite3.Connection) -> int:
            sql = (
                "UPDATE deliveries SET state = 'pending', attempts = 0, due_at = ?, "
                "dead_at = NULL, lease = NULL WHERE state = 'dead' AND subscription_id IN "
                "(SELECT id FROM subscriptions WHERE active = 1)"
            )
            params: tuple[float, ...] | tuple[float, int] = (now,)
            if receiver_id is not None:
                sql += " AND subscription_id = ?"
                params = (now, receiver_id)
            return conn.execute(sql, params).rowcount

        return await self._writer.run(operation)

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
            waiting = conn.execute("SELECT COUNT(*) FROM messages WHERE routed = 0").fetchone()[0]
            delivered = conn.execute(
                "SELECT value FROM counters WHERE name = 'delivered'"
            ).fetchone()[0]
            return BrokerStats(
                receivers=by_mode.get(Mode.RECEIVE.value, 0),
                senders=by_mode.get(Mode.SEND.value, 0),
                queue_length=pending + waiting,
                completed=delivered,
            )

        return await self._writer.run(operation)

    async def ping(self) -> None:
        # Through the writer, as a publish goes: a wedged writer means not ready.
        try:
            await self._writer.run(lambda conn: conn.execute("SELECT 1 FROM counters").fetchone())
        except WriterClosed:
            raise StoreUnavailable("the store is closed") from None

    async def topic_backlogs(self) -> list[TopicBacklog]:
        rows = await self._read(
            "SELECT topic, COUNT(*), MIN(published_at) FROM messages m WHERE routed = 0 "
            "OR EXISTS (SELECT 1 FROM deliveries d WHERE d.message_seq = m.seq "
            "AND d.state = 'pending') GROUP BY topic ORDER BY topic"
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


def _lock_data_dir(data_dir: Path) -> IO[str]:
    lock_file = open(data_dir / LOCK_FILE, "a+")  # noqa: SIM115 - held open while running
    try:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.close()
        raise DataDirLocked(
            f"another mq-py process is using {data_dir}; stop it or choose another --data-dir"
        ) from None
    lock_file.seek(0)
    lock_file.truncate()
    lock_file.write(f"{os.getpid()}\n")
    lock_file.flush()
    return lock_file


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


def _release_orphaned_leases(conn: sqlite3.Connection) -> None:
    # We hold the data directory's lock, so every lease on record belongs to a process
    # that died: its deliveries are due now rather than when the lease would expire.
    conn.execute(
        "UPDATE deliveries SET due_at = 0, lease = NULL "
        "WHERE state = 'pending' AND lease IS NOT NULL"
    )


def _insert_connection(
    conn: sqlite3.Connection,
    mode: Mode,
    client_url: str,
    topic: str,
    now: float,
    key_id: str | None,
) -> int:
    # Ids of disconnected clients stay in the table, so a random id is never reused.
    while True:
        connection_id = new_connection_id()
        try:
            conn.execute(
                "INSERT INTO connections (id, mode, client_url, topic, connected_at, key_id) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (connection_id, mode.value, client_url, topic, now, key_id),
            )
        except sqlite3.IntegrityError:
            continue
        return connection_id


def _route_waiting_messages(
    conn: sqlite3.Connection, subscription_id: int, topic: str, now: float
) -> None:
    conn.execute(
        "INSERT INTO deliveries (message_seq, subscription_id, state, due_at) "
        "SELECT seq, ?, 'pending', ? FROM messages WHERE topic = ? AND routed = 0 ORDER BY seq",
        (subscription_id, now, topic),
    )
    conn.execute("UPDATE messages SET routed = 1 WHERE topic = ? AND routed = 0", (topic,))


def _end_subscription(conn: sqlite3.Connection, subscription_id: int) -> None:
    conn.execute("UPDATE subscriptions SET active = 0 WHERE id = ?", (subscription_id,))
    # Dead letters go too: nothing could redrive them to a receiver that is gone.
    seqs = conn.execute(
        "DELETE FROM deliveries WHERE subscription_id = ? RETURNING message_seq",
        (subscription_id,),
    ).fetchall()
    for (seq,) in set(seqs):
        _forget_message_if_done(conn, seq)


def _forget_message_if_done(conn: sqlite3.Connection, seq: int) -> None:
    deleted = conn.execute(
        "DELETE FROM messages WHERE seq = ? AND routed = 1 "
        "AND NOT EXISTS (SELECT 1 FROM deliveries WHERE message_seq = ?)",
        (seq, seq),
    ).rowcount
    if deleted:
        conn.execute("UPDATE counters SET value = value - ? WHERE name = 'messages'", (deleted,))


def _stored_messages(conn: sqlite3.Connection) -> int:
    count: int = conn.execute("SELECT value FROM counters WHERE name = 'messages'").fetchone()[0]
    return count


def _claim(
    conn: sqlite3.Connection,
    limit: int,
    now: float,
    lease_seconds: float,
    per_subscription_limit: int,
    busy: Mapping[int, int],
) -> Claim:
    candidates: list[tuple[float, Delivery]] = []
    next_due: float | None = None
    lease = new_lease_token()
    subscriptions = conn.execute(
        "SELECT id, url, secret, previous_secret, previous_secret_until FROM subscriptions "
        "WHERE active = 1"
    ).fetchall()
    for subscription_id, url, secret, previous, previous_until in subscriptions:
        secrets = tuple(s for s in (secret, previous if (previous_until or 0) > now else None) if s)
        room = per_subscription_limit - busy.get(subscription_id, 0)
        if room <= 0:
            continue  # this receiver is at its cap; a finished delivery wakes the caller
        take = min(room, limit)
        rows = conn.execute(
            "SELECT d.id, d.attempts, d.due_at, m.id, m.body, m.published_at "
            "FROM deliveries d JOIN messages m ON m.seq = d.message_seq "
            "WHERE d.subscription_id = ? AND d.state = 'pending' AND d.due_at <= ? "
            "ORDER BY d.due_at, d.id LIMIT ?",
            (subscription_id, now, take + 1),
        ).fetchall()
        # The one row beyond what we take tells whether more are due right now.
        more_due = len(rows) > take
        rows = rows[:take]
        for delivery_id, attempts, due_at, message_id, body, published_at in rows:
            delivery = Delivery(
                delivery_id=delivery_id,
                lease=lease,
                message_id=message_id,
                subscription_id=subscription_id,
                url=url,
                body=body,
                attempt=attempts + 1,
                published_at=published_at,
                secrets=secrets,
            )
            candidates.append((due_at, delivery))
        if not more_due and len(rows) < room:
            upcoming = conn.execute(
                "SELECT MIN(due_at) FROM deliveries "
                "WHERE subscription_id = ? AND state = 'pending' AND due_at > ?",
                (subscription_id, now),
            ).fetchone()[0]
            if upcoming is not None and (next_due is None or upcoming < next_due):
                next_due = upcoming
        else:
            next_due = now  # it may have more due right away
    candidates.sort(key=lambda item: item[0])
    chosen = [delivery for _, delivery in candidates[:limit]]
    if len(candidates) > limit:
        next_due = now
    conn.executemany(
        "UPDATE deliveries SET attempts = attempts + 1, due_at = ?, lease = ? WHERE id = ?",
        [(now + lease_seconds, lease, d.delivery_id) for d in chosen],
    )
    return Claim(chosen, next_due)


_CONNECTION_COLUMNS = "id, mode, client_url, topic, connected_at, key_id"


def _connection(row: tuple[int, str, str, str, float, str | None]) -> Connection:
    connection_id, mode, client_url, topic, connected_at, key_id = row
    return Connection(connection_id, Mode(mode), client_url, topic, connected_at, key_id)
