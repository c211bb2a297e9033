"""Recording how attempts ended, many at a time: acks, retries and dead letters.

The dispatcher settles each delivery on its own; the store gathers what arrives while
the writer is busy (`batching.Batcher`) and records it in one operation. An ack alone
took six statements (its savepoint, the delivery, the message, two counters); a batch of
acks takes one statement for all their deliveries, one for their messages and one per
counter.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Sequence

from mqpy.store.batching import Settlement
from mqpy.store.sqlite_tallies import Tallies

# Rows per statement: 4 parameters each stays far below SQLite's 32,766.
_CHUNK = 500

_RETRY = (
    "UPDATE deliveries SET due_at = ?, lease = NULL, last_error = ?, last_status = ? "
    "WHERE id = ? AND lease = ?"
)
_DEAD_LETTER = (
    "UPDATE deliveries SET state = 'dead', dead_at = ?, lease = NULL, last_error = ?, "
    "last_status = ? WHERE id = ? AND lease = ?"
)


def settle(conn: sqlite3.Connection, settlements: Sequence[Settlement], tallies: Tallies) -> None:
    """Record every settlement whose lease still holds; the others were taken over,
    and whoever holds the lease now reports the outcome."""
    retries = [s for s in settlements if s.due_at is not None]
    if retries:
        conn.executemany(_RETRY, [_failure_row(s, s.due_at) for s in retries])
    deaths = [s for s in settlements if s.dead]
    if deaths:
        conn.executemany(_DEAD_LETTER, [_failure_row(s, s.at) for s in deaths])
    acks = sorted(
        (s for s in settlements if s.due_at is None and not s.dead),
        key=lambda s: s.delivery.delivery_id,
    )
    if not acks:
        return
    seqs: set[int] = set()
    for start in range(0, len(acks), _CHUNK):
        chunk = acks[start : start + _CHUNK]
        values = ", ".join(["(?, ?, ?, ?)"] * len(chunk))
        params = [
            value
            for s in chunk
            for value in (s.delivery.delivery_id, s.delivery.lease, s.at, s.status)
        ]
        rows = conn.execute(
            "UPDATE deliveries SET state = 'delivered', delivered_at = v.column3, "
            "lease = NULL, last_status = v.column4, last_error = NULL "
            f"FROM (VALUES {values}) AS v WHERE deliveries.id = v.column1 "
            "AND deliveries.lease = v.column2 AND deliveries.state = 'pending' "
            "RETURNING message_seq",
            params,
        ).fetchall()
        seqs.update(seq for (seq,) in rows)
        if rows:
            conn.execute(
                "UPDATE counters SET value = value + ? WHERE name = 'delivered'", (len(rows),)
            )
    tallies.add_stored(conn, -finish_messages(conn, seqs, max(s.at for s in acks)))


def finish_messages(conn: sqlite3.Connection, seqs: Collection[int], now: float) -> int:
    """Mark messages with nothing left to deliver as done, and return how many: they
    stay for the retention window, and the caller counts them off the backlog."""
    ordered = sorted(seqs)
    done = 0
    for start in range(0, len(ordered), _CHUNK):
        chunk = ordered[start : start + _CHUNK]
        marks = ", ".join("?" * len(chunk))
        done += conn.execute(
            f"UPDATE messages SET done_at = ? WHERE seq IN ({marks}) AND routed = 1 "
            "AND done_at IS NULL AND NOT EXISTS (SELECT 1 FROM deliveries "
            "WHERE message_seq = messages.seq AND state IN ('pending', 'dead'))",
            (now, *chunk),
        ).rowcount
    return done


def _failure_row(s: Settlement, at: float | None) -> tuple[object, ...]:
    return (at, s.error, s.status, s.delivery.delivery_id, s.delivery.lease)
