"""Seek and start_at on PostgreSQL (see store/replay.py).

The caller's transaction holds the sweep lock, so no message it reads is swept under
it, and no other seek runs meanwhile. Claims and settlements on other nodes do run:
a delivery claimed between two statements here is left to its holder, and the
messages given new deliveries are locked before those are written, so an ack that
would finish one of them waits and then sees them (as `postgres_sql.FINISH_MESSAGES`
expects of every writer of deliveries).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from mqpy.model.domain import SeekResult
from mqpy.store import postgres_sql as sql
from mqpy.store.postgres_schema import TALLY_SLOTS
from mqpy.store.postgres_sql import PgConnection
from mqpy.store.replay import REPLAY_COLUMNS, due_at, replayable
from mqpy.store.routes import Target

# The target's deliveries (`d`): an ungrouped subscription's, or a group's ($1).
_OF_SUBSCRIPTION = "d.subscription_id = $1 AND d.group_id IS NULL"
_OF_GROUP = "d.group_id = $1"
# Out under a lease that still runs at $2: its holder may yet ack it.
_IN_FLIGHT = "d.state = 'pending' AND d.lease IS NOT NULL AND d.due_at > $2"


async def seek(conn: PgConnection, target: Target, since: float, now: float) -> SeekResult:
    """Move `target` to `since`; returns what it did."""
    grouped = target.group_id is not None
    of_target = _OF_GROUP if grouped else _OF_SUBSCRIPTION
    key = target.group_id if grouped else target.subscription_id
    acked = await conn.fetch(
        "UPDATE deliveries d SET state = 'delivered', delivered_at = $2, lease = NULL, "
        "leased_by = NULL, last_error = NULL FROM messages m "
        f"WHERE {of_target} AND d.state = 'pending' AND m.seq = d.message_seq "
        "AND m.published_at < $3 RETURNING d.message_seq",
        key,
        now,
        since,
    )
    await _finish(conn, sorted({row[0] for row in acked}), now)
    rows = await conn.fetch(
        f"SELECT {REPLAY_COLUMNS} FROM messages WHERE published_at >= $1 ORDER BY seq", since
    )
    wanted = replayable([tuple(row) for row in rows], target)
    seqs = [row[0] for row in wanted]
    await conn.execute(
        f"DELETE FROM deliveries d WHERE {of_target} AND d.message_seq = ANY($3::bigint[]) "
        f"AND NOT ({_IN_FLIGHT})",
        key,
        now,
        seqs,
    )
    # What is left of the target's is out under a lease (claimed meanwhile too).
    kept = {
        row[0]
        for row in await conn.fetch(
            "SELECT d.message_seq FROM deliveries d "
            f"WHERE {of_target} AND d.message_seq = ANY($2::bigint[])",
            key,
            seqs,
        )
    }
    due = [row for row in wanted if row[0] not in kept]
    await _add(conn, target, due, now)
    return SeekResult(due=len(due), acked=len(acked), in_flight=len(wanted) - len(due))


async def start(conn: PgConnection, target: Target, since: float, now: float) -> SeekResult:
    """A new target's `start_at`: `seek` for a target with no deliveries yet, so there
    is nothing to acknowledge, delete or leave to a lease holder, only deliveries to
    add (three statements fewer, each over the whole backlog)."""
    rows = await conn.fetch(
        f"SELECT {REPLAY_COLUMNS} FROM messages WHERE published_at >= $1 ORDER BY seq", since
    )
    due = replayable([tuple(row) for row in rows], target)
    await _add(conn, target, due, now)
    return SeekResult(due=len(due), acked=0, in_flight=0)


async def _add(conn: PgConnection, target: Target, due: list[Sequence[Any]], now: float) -> None:
    """Give `target` a delivery of each message row (REPLAY_COLUMNS) in `due`."""
    await conn.execute(sql.LOCK_MESSAGES, [row[0] for row in due])
    await conn.execute(
        "INSERT INTO deliveries (message_seq, subscription_id, group_id, ordering_key, state, "
        "due_at) SELECT seq, $1, $2, key, 'pending', due FROM unnest($3::bigint[], $4::text[], "
        "$5::float8[]) WITH ORDINALITY AS r (seq, key, due, n) ORDER BY n",
        target.subscription_id,
        target.group_id,
        [row[0] for row in due],
        [row[3] for row in due],
        [due_at(row[4], now) for row in due],
    )
    revived = await conn.fetch(
        "UPDATE messages SET done_at = NULL WHERE seq = ANY($1::bigint[]) "
        "AND done_at IS NOT NULL RETURNING seq",
        [row[0] for row in due],
    )
    if revived:
        await conn.execute(
            "UPDATE tallies SET stored = stored + $1 WHERE slot = $2",
            len(revived),
            secrets.randbelow(TALLY_SLOTS),
        )


async def _finish(conn: PgConnection, seqs: list[int], now: float) -> None:
    """The messages settled as acked that have nothing left to deliver are done.
    Before the replayed messages are locked: in sequence order, as acks lock them."""
    if not seqs:
        return
    await conn.execute(sql.LOCK_MESSAGES, seqs)
    await conn.execute(
        sql.FINISH_MESSAGES, seqs, [now] * len(seqs), 0, secrets.randbelow(TALLY_SLOTS)
    )
