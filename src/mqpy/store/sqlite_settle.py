"""Recording how attempts ended, many at a time: acks, retries and dead letters.

The dispatcher settles each delivery on its own. An ack alone took six statements (its
savepoint, the delivery, the message, two counters); `SettlementQueue` gathers every
settlement that arrives before the writer gets to them and records them in one
operation: one statement for all the acks' deliveries, one for their messages, one per
counter.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Collection, Sequence

from mqpy.store import endpoint_health
from mqpy.store.batching import Settlement
from mqpy.store.history import MAX_ATTEMPTS_KEPT, attempt_row, failed, failures
from mqpy.store.rows import chunks
from mqpy.store.sqlite_events import EventWriter
from mqpy.store.sqlite_tallies import Tallies
from mqpy.store.sqlite_writer import GroupCommitWriter

_RETRY = (
    "UPDATE deliveries SET due_at = ?, lease = NULL, last_error = ?, last_status = ? "
    "WHERE id = ? AND lease = ?"
)
# An attempt's history row, for a delivery whose lease still holds (before the outcome
# clears it). VALUES columns: attempt_row()'s.
_RECORD_ATTEMPTS = (
    "INSERT INTO delivery_attempts (message_seq, delivery_id, attempt, subscription_id, "
    "sent_at, duration, outcome, status, error) SELECT d.message_seq, v.column1, v.column3, "
    "v.column4, v.column5, v.column6, v.column7, v.column8, v.column9 FROM (VALUES {values}) "
    "AS v JOIN deliveries d ON d.id = v.column1 AND d.lease = v.column2"
)
_TRIM_ATTEMPTS = (
    "DELETE FROM delivery_attempts WHERE id IN (SELECT id FROM delivery_attempts "
    "WHERE message_seq = (SELECT message_seq FROM deliveries WHERE id = ?1) "
    f"AND delivery_id = ?1 ORDER BY id DESC LIMIT -1 OFFSET {MAX_ATTEMPTS_KEPT})"
)
_DEAD_LETTER = (
    "UPDATE deliveries SET state = 'dead', dead_at = ?, lease = NULL, last_error = ?, "
    "last_status = ? WHERE id = ? AND lease = ?"
)


class SettlementQueue:
    """Settlements waiting to be recorded, recorded together by one operation.

    Once the event loop's turn that brought them is over, the operation runs at once
    on the loop if the writer's connection is free (`GroupCommitWriter.run_now`), else
    it goes to the writer. There it takes whatever is waiting when the writer runs it,
    not when it was queued: settlements that arrive while it waits in the writer's
    queue join it, and one that arrives while it runs gets the next operation. So they
    reach the earliest transaction that can take them.
    """

    def __init__(self, writer: GroupCommitWriter, tallies: Tallies, events: EventWriter) -> None:
        self._writer = writer
        self._tallies = tallies
        self._events = events
        self._lock = threading.Lock()  # the event loop adds, the writer thread takes
        self._waiting: list[_Waiting] = []
        self._queued = False  # an operation that will take them is in the writer's queue

    async def submit(self, settlement: Settlement) -> None:
        await self.submit_nowait(settlement)

    def submit_nowait(self, settlement: Settlement) -> asyncio.Future[None]:
        """Queue `settlement`; the future settles once its transaction commits."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            self._waiting.append((settlement, future))
            schedule = not self._queued
            self._queued = True
        if schedule:
            # Once this turn of the event loop is over, so that every outcome it
            # brought shares the transaction.
            loop.call_soon(self._record_soon)
        return future

    def _record_soon(self) -> None:
        """Record what is waiting in a transaction of its own right here if the writer
        is free (`run_now`), else in the writer's next one."""
        taken: list[_Waiting] = []
        try:
            ran, _ = self._writer.run_now(lambda conn: self._record(conn, taken))
        except Exception as exc:  # noqa: BLE001 - each caller hears of it
            ran = bool(taken)
            _answer_all(taken, exc)
        else:
            if ran:
                _answer_all(taken, None)
        if ran:
            return
        taken = []  # filled by the operation, in the writer thread
        try:
            operation = self._writer.submit(lambda conn: self._record(conn, taken), durable=False)
        except BaseException as exc:
            with self._lock:
                waiting, self._waiting, self._queued = self._waiting, [], False
            _answer_all(waiting, exc)
            if not isinstance(exc, Exception):
                raise
            return
        operation.add_done_callback(lambda done: _answer(done, taken))

    def _record(self, conn: sqlite3.Connection, taken: list[_Waiting]) -> None:
        with self._lock:
            taken.extend(self._waiting)
            self._waiting = []
            self._queued = False
        settle(conn, [settlement for settlement, _ in taken], self._tallies, self._events)


_Waiting = tuple[Settlement, "asyncio.Future[None]"]


def _answer(operation: asyncio.Future[None], taken: list[_Waiting]) -> None:
    """On the event loop, once the operation's transaction committed or failed."""
    _answer_all(taken, operation.exception() if not operation.cancelled() else None)


def _answer_all(taken: list[_Waiting], failure: BaseException | None) -> None:
    for _, future in taken:
        if future.done():
            continue
        if failure is None:
            future.set_result(None)
        else:
            future.set_exception(failure)


def settle(
    conn: sqlite3.Connection,
    settlements: Sequence[Settlement],
    tallies: Tallies,
    events: EventWriter,
) -> None:
    """Record every settlement whose lease still holds; the others were taken over,
    and whoever holds the lease now reports the outcome."""
    record_failed_attempts(conn, failed(settlements))
    endpoint_health.record_sqlite(conn, settlements)  # one statement per batch
    retries = [s for s in settlements if s.due_at is not None]
    if retries:
        conn.executemany(_RETRY, [_failure_row(s, s.due_at) for s in retries])
    acks = sorted(
        (s for s in settlements if s.due_at is None and not s.dead),
        key=lambda s: s.delivery.delivery_id,
    )
    if acks:
        _record_acks(conn, acks, tallies)
    deaths = [s for s in settlements if s.dead]
    if deaths:  # last: its event counts on the tallies (each reported once, events.py)
        dead = [s for s in deaths if conn.execute(_DEAD_LETTER, _failure_row(s, s.at)).rowcount]
        events.dead_lettered(conn, dead)


def _record_acks(conn: sqlite3.Connection, acks: Sequence[Settlement], tallies: Tallies) -> None:
    seqs: set[int] = set()
    for chunk in chunks(acks):
        values = ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(chunk))
        params = [
            value
            for s in chunk
            for value in (
                s.delivery.delivery_id,
                s.delivery.lease,
                s.at,
                s.status,
                s.attempted_at,
                s.duration,
            )
        ]
        rows = conn.execute(
            "UPDATE deliveries SET state = 'delivered', delivered_at = v.column3, "
            "lease = NULL, last_status = v.column4, last_error = NULL, "
            "sent_at = v.column5, duration = v.column6 "
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
    tallies.add_stored(-finish_messages(conn, seqs, max(s.at for s in acks)))


def record_failed_attempts(conn: sqlite3.Connection, settlements: Sequence[Settlement]) -> None:
    """Add each failed attempt to its delivery's history, and trim those histories to
    the newest MAX_ATTEMPTS_KEPT (an ack goes on the delivery's row instead)."""
    for chunk in chunks(settlements, 200):  # 9 parameters each
        values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(chunk))
        params = [value for s in chunk for value in attempt_row(s)]
        conn.execute(_RECORD_ATTEMPTS.format(values=values), params)
    conn.executemany(_TRIM_ATTEMPTS, [(delivery_id,) for delivery_id in failures(settlements)])


def finish_messages(conn: sqlite3.Connection, seqs: Collection[int], now: float) -> int:
    """Mark messages with nothing left to deliver as done, and return how many: they
    stay for the retention window, and the caller counts them off the backlog."""
    ordered = sorted(seqs)
    done = 0
    for chunk in chunks(ordered):
        marks = ", ".join("?" * len(chunk))
        done += conn.execute(
            f"UPDATE messages SET done_at = ? WHERE seq IN ({marks}) AND done_at IS NULL "
            "AND NOT EXISTS (SELECT 1 FROM deliveries "
            "WHERE message_seq = messages.seq AND state IN ('pending', 'dead'))",
            (now, *chunk),
        ).rowcount
    return done


def _failure_row(s: Settlement, at: float | None) -> tuple[object, ...]:
    return (at, s.error, s.status, s.delivery.delivery_id, s.delivery.lease)
