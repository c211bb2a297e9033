"""Publishing the broker's own events (events.py) on SQLite, inside the operation that
makes the change they report, so they commit or roll back with it.

Only operations that are not `buffered` publish events: the writer flushes the publish
buffer before each of them, so the sequence numbers read here are the newest, and a
buffered publish later in the transaction reads them again after these rows.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from mqpy.model.events import EVENTS_TOPIC
from mqpy.store.batching import Settlement
from mqpy.store.endpoint_health import dead_letter_events, expiry_events, routed_events
from mqpy.store.routes import Routes
from mqpy.store.rows import chunks, dump_attributes
from mqpy.store.sqlite_tallies import Tallies

_MESSAGE = (
    "INSERT INTO messages (seq, id, topic, body, publisher_id, published_at, routed, "
    "attributes) VALUES (?, ?, ?, ?, NULL, ?, 1, ?)"
)
_DELIVERY = (
    "INSERT INTO deliveries (message_seq, subscription_id, group_id, state, due_at) "
    "VALUES (?, ?, ?, 'pending', ?)"
)


class EventWriter:
    """Writes events as messages on `mq.events`, routed by the store's current routes."""

    def __init__(self, routes: Callable[[sqlite3.Connection], Routes], tallies: Tallies) -> None:
        self._routes = routes
        self._tallies = tallies

    def publish(
        self, conn: sqlite3.Connection, events: Sequence[dict[str, Any]], at: float
    ) -> None:
        """Write `events`, last in the operation (the tallies count them as written).
        An event no subscription takes is not kept: nobody asked for it."""
        routed = routed_events(self._routes(conn), events, at)
        if not routed:
            return
        seq = int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM messages").fetchone()[0])
        for message, targets in routed:
            seq += 1
            attributes = dump_attributes(message.attributes)
            conn.execute(_MESSAGE, (seq, message.id, message.topic, message.body, at, attributes))
            conn.executemany(_DELIVERY, [(seq, t.subscription_id, t.group_id, at) for t in targets])
        self._tallies.add_stored(len(routed))
        self._tallies.published(EVENTS_TOPIC, len(routed), at)

    def dead_lettered(self, conn: sqlite3.Connection, settlements: Sequence[Settlement]) -> None:
        """Publish a `delivery.dead_lettered` event for each of these settlements (dead
        letters whose lease held, so each is reported once however often it is
        settled)."""
        if settlements:
            events = dead_letter_events(self._routes(conn), settlements)
            self.publish(conn, events, max(s.at for s in settlements))

    def expired(
        self, conn: sqlite3.Connection, rows: Sequence[tuple[int, int, int]], error: str, at: float
    ) -> None:
        """Publish a `delivery.dead_lettered` event for each delivery that expiry just
        dead-lettered: rows of (subscription id, message seq, attempts)."""
        if not rows:
            return
        found: dict[int, tuple[str, str]] = {}
        for chunk in chunks(sorted({seq for _, seq, _ in rows})):
            marks = ", ".join("?" * len(chunk))
            for seq, message_id, topic in conn.execute(
                f"SELECT seq, id, topic FROM messages WHERE seq IN ({marks})", chunk
            ):
                found[seq] = (message_id, topic)
        expired = [(sid, *found[seq], attempts) for sid, seq, attempts in rows]
        self.publish(conn, expiry_events(self._routes(conn), expired, error, at), at)
