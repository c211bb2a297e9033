"""Seek and start_at on SQLite (see store/replay.py): one writer operation, so no
claim, settlement or sweep runs between its statements."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable

from mqpy.model.domain import SeekResult
from mqpy.model.topics import is_pattern
from mqpy.store.replay import REPLAY_COLUMNS, replayable
from mqpy.store.routes import Target
from mqpy.store.sqlite_settle import finish_messages

# The target's deliveries (`d`): an ungrouped subscription's, or a group's.
_OF_SUBSCRIPTION = "d.subscription_id = ? AND d.group_id IS NULL"
_OF_GROUP = "d.group_id = ?"
# Out under a lease that still runs: its holder may yet ack it.
_IN_FLIGHT = "d.state = 'pending' AND d.lease IS NOT NULL AND d.due_at > ?"


def start(
    conn: sqlite3.Connection, target: Target, since: float, now: float
) -> tuple[SeekResult, int]:
    """A new target's `start_at`: `seek` for a target with no deliveries yet, so there
    is nothing to acknowledge, delete or leave to a lease holder, only deliveries to
    add. For one topic and no filter that is one statement, with no row read into
    Python: a receiver connecting with `start_at` to a backlog of 20,000 messages held
    the writer (every publish and ack) for about 100 ms, a third of it in statements
    that found nothing to do."""
    if target.filter or is_pattern(target.pattern):
        return seek(conn, target, since, now)
    inserted = conn.execute(
        "INSERT INTO deliveries (message_seq, subscription_id, group_id, ordering_key, "
        "state, due_at) SELECT seq, ?, ?, ordering_key, 'pending', "
        "MAX(?, COALESCE(deliver_at, 0)) FROM messages WHERE published_at >= ? AND topic = ? "
        "ORDER BY seq",
        (target.subscription_id, target.group_id, now, since, target.pattern),
    ).rowcount
    revived = conn.execute(
        "UPDATE messages SET done_at = NULL WHERE published_at >= ? AND topic = ? "
        "AND done_at IS NOT NULL",
        (since, target.pattern),
    ).rowcount
    return SeekResult(due=inserted, acked=0, in_flight=0), revived


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
    # Sequence numbers go in as one JSON array, not a statement per message: a seek over
    # 100,000 messages took 1.1 s of the writer that way, and publishes wait for it.
    conn.execute(
        f"DELETE FROM deliveries AS d WHERE {of_target} AND d.message_seq IN "
        f"(SELECT value FROM json_each(?)) AND NOT ({_IN_FLIGHT})",
        (key, _array(row[0] for row in wanted), now),
    )
    in_flight = {
        seq
        for (seq,) in conn.execute(
            f"SELECT d.message_seq FROM deliveries d WHERE {of_target} "
            "AND d.message_seq IN (SELECT value FROM json_each(?))",
            (key, _array(row[0] for row in wanted)),
        )
    }
    due = _array(row[0] for row in wanted if row[0] not in in_flight)
    # In publish order: a key's deliveries leave oldest id first (sqlite_claim.py).
    inserted = conn.execute(
        "INSERT INTO deliveries (message_seq, subscription_id, group_id, ordering_key, "
        "state, due_at) SELECT m.seq, ?, ?, m.ordering_key, 'pending', "
        "MAX(?, COALESCE(m.deliver_at, 0)) FROM messages m "
        "WHERE m.seq IN (SELECT value FROM json_each(?)) ORDER BY m.seq",
        (target.subscription_id, target.group_id, now, due),
    ).rowcount
    revived = conn.execute(
        "UPDATE messages SET done_at = NULL WHERE seq IN (SELECT value FROM json_each(?)) "
        "AND done_at IS NOT NULL",
        (due,),
    ).rowcount
    result = SeekResult(due=inserted, acked=len(acked), in_flight=len(wanted) - inserted)
    return result, revived - finished


def _array(seqs: Iterable[int]) -> str:
    return json.dumps(list(seqs))
