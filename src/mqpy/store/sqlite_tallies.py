"""Figures the hot path keeps in memory and writes once per transaction.

Every publish would otherwise read the stored-message count (for --max-backlog) and
update its topic's row: two statements per message. The writer thread alone uses
this; the group-commit writer tells it when a rollback makes memory stale.
"""

from __future__ import annotations

import sqlite3


class Tallies:
    """The count of stored messages not fully delivered, and per-topic publish counts
    waiting for the next commit."""

    def __init__(self) -> None:
        self._stored: int | None = None
        self._published: dict[str, tuple[int, float]] = {}  # topic: (count, first seen)

    def stored(self, conn: sqlite3.Connection) -> int:
        """Messages not fully delivered (dead letters count), read once then kept."""
        if self._stored is None:
            self._stored = int(
                conn.execute("SELECT value FROM counters WHERE name = 'messages'").fetchone()[0]
            )
        return self._stored

    def add_stored(self, conn: sqlite3.Connection, delta: int) -> None:
        if delta == 0:
            return
        conn.execute("UPDATE counters SET value = value + ? WHERE name = 'messages'", (delta,))
        if self._stored is not None:
            self._stored += delta

    def published(self, topic: str, count: int, at: float) -> None:
        """Call once an operation's messages are all written (not before: a failing
        operation must add nothing)."""
        known, first = self._published.get(topic, (0, at))
        self._published[topic] = (known + count, min(first, at))

    def flush(self, conn: sqlite3.Connection) -> None:
        """Write the publish counts of this transaction (the writer's before_commit)."""
        if not self._published:
            return
        conn.executemany(
            "INSERT INTO topics (name, first_seen, published) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET published = published + excluded.published",
            [(topic, first, count) for topic, (count, first) in self._published.items()],
        )
        self._published.clear()

    def rolled_back(self, whole_transaction: bool) -> None:
        """The writer's on_rollback: read the count again; a failed transaction's
        publish counts are void."""
        self._stored = None
        if whole_transaction:
            self._published.clear()
