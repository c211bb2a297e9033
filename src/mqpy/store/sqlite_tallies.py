"""Figures the hot path keeps in memory and writes once per transaction.

Every publish would otherwise read the stored-message count (for --max-backlog), update
it, and update its topic's row: three statements per message. The writer thread alone uses
this; the group-commit writer tells it when a rollback makes memory stale.
"""

from __future__ import annotations

import sqlite3


class Tallies:
    """The count of stored messages not fully delivered, and what this transaction adds
    to it and to each topic's publish count, written once just before it commits."""

    def __init__(self) -> None:
        self._stored: int | None = None  # as of this transaction, pending changes included
        self._stored_change = 0  # not written yet
        self._published: dict[str, tuple[int, float]] = {}  # topic: (count, first seen)

    def stored(self, conn: sqlite3.Connection) -> int:
        """Messages not fully delivered (dead letters count), read once then kept."""
        if self._stored is None:
            written = conn.execute("SELECT value FROM counters WHERE name = 'messages'")
            self._stored = int(written.fetchone()[0]) + self._stored_change
        return self._stored

    def forget(self) -> None:
        """Read the count again when next asked: another process sharing the file may
        have changed it. Between transactions only, when nothing is left unwritten."""
        self._stored = None

    def add_stored(self, delta: int) -> None:
        """Call once an operation's writes are all done (not before: a failing operation
        must add nothing)."""
        self._stored_change += delta
        if self._stored is not None:
            self._stored += delta

    def published(self, topic: str, count: int, at: float) -> None:
        """Call once an operation's messages are all written, as `add_stored`."""
        known, first = self._published.get(topic, (0, at))
        self._published[topic] = (known + count, min(first, at))

    def flush(self, conn: sqlite3.Connection) -> None:
        """Write this transaction's changes (the writer's before_commit): one statement
        per transaction instead of one per publish."""
        if self._stored_change:
            conn.execute(
                "UPDATE counters SET value = value + ? WHERE name = 'messages'",
                (self._stored_change,),
            )
            self._stored_change = 0
        if not self._published:
            return
        conn.executemany(
            "INSERT INTO topics (name, first_seen, published) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET published = published + excluded.published",
            [(topic, first, count) for topic, (count, first) in self._published.items()],
        )
        self._published.clear()

    def rolled_back(self, whole_transaction: bool) -> None:
        """The writer's on_rollback. One operation rolled back added nothing (see
        `add_stored`), but read the count again anyway; a failed transaction's changes
        are void."""
        self._stored = None
        if whole_transaction:
            self._stored_change = 0
            self._published.clear()
