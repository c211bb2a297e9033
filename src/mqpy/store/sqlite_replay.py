"""Seek and start_at on SQLite (see store/replay.py): one writer operation, so no
claim, settlement or sweep runs between its statements."""

from __future__ import annotations

import sqlite3

from mqpy.domain import SeekResult
from mqpy.store.replay import REPLAY_COLUMNS, due_at, replayable
from mqpy.store.routes import Target
from mqpy.store.sqlite_settle import finish_messages

# The target's deliveries (`d`): an ungrouped subscription's, or a group's.
_OF_SUBSCRIPTION = "d.subscription_id = ? AND d.group_id IS NULL"
_OF_GROUP = "d.group_id = ?"
# Out under a lease that still runs: its holder may yet ack it.
_IN_FLIGHT = "d.state = 'pending' AND d.lease IS NOT NULL AND d.due_at > ?"


def seek(
    conn: sqlite3.Connection, target: Target, since: float, now: float
) -> tuple[SeekResult, int]:
    """Move `target` to `since`; returns what it did and the change to the count of
    messages not fully delivered."""
    grouped = target.group_id is not None
    of_target = _OF_GROUP if grouped else _OF_SUBSCRIPTION
    key = target.group_id if grouped else target.subscription_id
    acked = conn.execute(
        "UPDATE deliveries AS d SET state = 'delivered', delivered_at = ?, lease = NULL, "
        f"last_error = NULL WHERE {of_target} AND d.state = 'pending' AND "
        "(SELECT m.published_at FROM messages m WHERE m.seq = d.message_seq) < ? "
        "RETURNING message_seq",
        (now, key, since),
    ).fetchall()
    finished = finish_messages(conn, {seq for (seq,) in acked}, now)
    rows = conn.execute(
        f"SELECT {REPLAY_COLUMNS} FROM messages WHERE published_at >= ? ORDER BY seq", (since,)
    ).fetchall()
    wanted = replayable(rows, target)
    conn.executemany(
        f"DELETE FROM deliveries AS d WHERE d.message_seq = ? AND {of_target} "
        f"AND NOT ({_IN_FLIGHT})",
        [(row[0], key, now) for row in wanted],
    )
    in_flight = {
        seq
        for (seq,) in conn.execute(
            f"SELECT d.message_seq FROM deliveries d WHERE {of_target} AND {_IN_FLIGHT} "
            "AND d.message_seq >= ?",
            (key, now, wanted[0][0] if wanted else 0),
        )
    }
    due = [row for row in wanted if row[0] not in in_flight]
    # In publish order: a key's deliveries leave oldest id first (sqlite_claim.py).
    conn.executemany(
        "INSERT INTO deliveries (message_seq, subscription_id, group_id, ordering_key, "
        "state, due_at) VALUES (?, ?, ?, ?, 'pending', ?)",
        [
            (row[0], target.subscription_id, target.group_id, row[3], due_at(row[4], now))
            for row in due
        ],
    )
    revived = [(row[0],) for row in due if row[5] is not None]
    conn.executemany("UPDATE messages SET done_at = NULL WHERE seq = ?", revived)
    result = SeekResult(due=len(due), acked=len(acked), in_flight=len(wanted) - len(due))
    return result, len(revived) - finished
