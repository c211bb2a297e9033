"""Publishing on SQLite: the messages of one transaction are written together.

Python's sqlite3 gives up the GIL while SQLite runs a statement and must win it back
from the event loop afterwards. Beside a busy event loop that handoff, not SQLite, is
most of what a statement costs (measured: 1.5 µs for an INSERT alone, 100 to 300 µs
beside a thread that keeps the GIL busy), and a publish used to be four or more
statements per message. So a publish only decides what to write (idempotency, the
routes, the sequence numbers) and adds its rows to a `PublishBuffer`; the writer
flushes the buffer with a few multi-row INSERTs before any other operation touches
the tables, and before the commit.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

from mqpy.model.domain import NewMessage, Published
from mqpy.store.claim_offers import PublishedDeliveries
from mqpy.store.routes import Routes
from mqpy.store.rows import dump_attributes

_MESSAGES = (
    "messages",
    "seq, id, topic, body, publisher_id, published_at, routed, attributes, ordering_key, "
    "deliver_at, done_at",
    11,
)
_DELIVERIES = (
    "deliveries",
    "message_seq, subscription_id, group_id, ordering_key, state, due_at",
    6,
)
_KEYS = ("idempotency_keys", "key_id, idempotency_key, message_id, created_at", 4)
# Rows per INSERT: 64 rows of 11 columns stay under the 999 variables of old SQLite
# builds. Runs are powers of two, so a few statement texts serve every batch size and
# sqlite3's statement cache keeps them prepared.
_LARGEST_RUN = 64

Row = tuple[Any, ...]


class PublishBuffer:
    """Rows published in the current transaction and not written yet. Only the
    writer thread uses it."""

    def __init__(self) -> None:
        self._messages: list[Row] = []
        self._deliveries: list[Row] = []
        self._keys: list[Row] = []
        # (API key id, idempotency key): message id, for keys buffered here.
        self._keyed: dict[tuple[str, str], str] = {}
        self._last_seq: int | None = None  # the highest sequence number handed out

    def publish(
        self,
        conn: sqlite3.Connection,
        routes: Routes,
        messages: Sequence[NewMessage],
        dedup_since: float,
        made: PublishedDeliveries,
    ) -> list[Published]:
        """Buffer what `messages` write and say what each did, noting in `made` what
        they make due (for a claim offered to the transaction). All or nothing: it
        raises before buffering anything."""
        last = self._last_seq
        if last is None:
            last = int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM messages").fetchone()[0])
        messages_rows: list[Row] = []
        deliveries: list[Row] = []
        keys: list[Row] = []
        keyed: dict[tuple[str, str], str] = {}
        results: list[Published] = []
        due_now: list[tuple[str, int, bool]] = []  # noted in `made` once nothing can raise
        for message in messages:
            if message.idempotency_key is not None:
                key = (message.publisher_key or "", message.idempotency_key)
                earlier = (
                    keyed.get(key) or self._keyed.get(key) or _stored_key(conn, key, dedup_since)
                )
                if earlier is not None:
                    results.append(Published(earlier, duplicate=True))
                    continue
                keyed[key] = message.id
                keys.append((*key, message.id, message.published_at))
            last += 1
            targets = routes.for_message(message.topic, message.attributes)
            messages_rows.append(
                (
                    last,
                    message.id,
                    message.topic,
                    message.body,
                    message.publisher_id,
                    message.published_at,
                    1,  # no longer read (schema 4)
                    dump_attributes(message.attributes),
                    message.ordering_key,
                    message.deliver_at,
                    # Nobody takes it: done at once, kept for a seek or a start_at.
                    None if targets else message.published_at,
                )
            )
            due = max(message.published_at, message.deliver_at or 0.0)
            deliveries.extend(
                (last, t.subscription_id, t.group_id, message.ordering_key, "pending", due)
                for t in targets
            )
            due_now.append((message.id, len(targets), due <= message.published_at))
            results.append(Published(message.id, deliveries=len(targets)))
        for message_id, count, now in due_now:
            made.add(message_id, count, due_now=now)
        self._last_seq = last
        self._messages += messages_rows
        self._deliveries += deliveries
        self._keys += keys
        self._keyed.update(keyed)
        return results

    def flush(self, conn: sqlite3.Connection) -> bool:
        """Write what is buffered, in the transaction under way; whether it wrote
        deliveries."""
        if self._last_seq is None:
            return False
        wrote_deliveries = bool(self._deliveries)
        for table, rows in (
            (_KEYS, self._keys),
            (_MESSAGES, self._messages),
            (_DELIVERIES, self._deliveries),
        ):
            for run in _runs(rows):
                conn.execute(_insert(*table, len(run)), [value for row in run for value in row])
        self.clear()
        return wrote_deliveries

    def clear(self) -> None:
        """Forget what is buffered: written, or its transaction rolled back."""
        self._messages = []
        self._deliveries = []
        self._keys = []
        self._keyed = {}
        self._last_seq = None


def _stored_key(conn: sqlite3.Connection, key: tuple[str, str], since: float) -> str | None:
    row = conn.execute(
        "SELECT message_id FROM idempotency_keys WHERE key_id = ? AND idempotency_key = ? "
        "AND created_at >= ?",
        (*key, since),
    ).fetchone()
    return None if row is None else str(row[0])


def _runs(rows: list[Row]) -> Iterator[list[Row]]:
    """`rows` in runs of a power of two, largest first."""
    start, size = 0, _LARGEST_RUN
    while start < len(rows):
        while size > len(rows) - start:
            size //= 2
        yield rows[start : start + size]
        start += size


@functools.cache
def _insert(table: str, columns: str, width: int, count: int) -> str:
    # An idempotency key seen again after its window replaces the expired row.
    verb = "INSERT OR REPLACE" if table == "idempotency_keys" else "INSERT"
    one = "(" + ", ".join("?" * width) + ")"
    return f"{verb} INTO {table} ({columns}) VALUES {', '.join([one] * count)}"
