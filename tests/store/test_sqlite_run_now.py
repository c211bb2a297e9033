"""The SQLite writer's `run_now`: the event loop runs a claim or a batch of acks on the
connection itself when it is free this moment, and never waits for a lock to be."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from mqpy.store.sqlite import DATABASE_FILE, SQLiteStore, prepare_group
from tests.store.support import T0, ack_all, claim, publish, receiver

BUMP = "UPDATE counters SET value = value + 1 WHERE name = 'delivered'"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "data")
    await opened.open()
    yield opened
    await opened.close()


def delivered_counter(data_dir: Path) -> int:
    """The store's `delivered` counter as another connection reads it."""
    conn = sqlite3.connect(data_dir / DATABASE_FILE)
    try:
        value: int = conn.execute("SELECT value FROM counters WHERE name = 'delivered'").fetchone()[
            0
        ]
        return value
    finally:
        conn.close()


async def test_an_operation_runs_on_the_calling_thread_and_is_committed(
    store: SQLiteStore,
) -> None:
    before = delivered_counter(store.data_dir)

    def bump(conn: sqlite3.Connection) -> int:
        conn.execute(BUMP)
        return threading.get_ident()

    ran, ident = store.writer.run_now(bump)
    assert ran
    assert ident == threading.get_ident()
    assert delivered_counter(store.data_dir) == before + 1


async def test_deliveries_are_claimed_and_acknowledged_through_it(store: SQLiteStore) -> None:
    await receiver(store)
    await publish(store, "hello")
    batches = store.writer.batches
    deliveries = (await claim(store, T0 + 1)).deliveries
    assert [d.body for d in deliveries] == ["hello"]
    await ack_all(store, deliveries, T0 + 2)
    assert store.writer.batches == batches + 2  # each a transaction of its own
    assert (await claim(store, T0 + 10_000)).deliveries == []
    assert (await store.stats()).completed == 1


@pytest.fixture
def locked_by_another_connection(store: SQLiteStore) -> Iterator[sqlite3.Connection]:
    """Another connection in the middle of a write transaction on the store's file."""
    conn = sqlite3.connect(store.data_dir / DATABASE_FILE, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()


async def test_it_declines_at_once_while_another_connection_writes(
    store: SQLiteStore, locked_by_another_connection: sqlite3.Connection
) -> None:
    started = time.monotonic()
    ran, result = store.writer.run_now(lambda conn: conn.execute(BUMP))
    waited = time.monotonic() - started
    assert (ran, result) == (False, None)
    # The connection's busy timeout is 5 s: the event loop did not sleep in it.
    assert waited < 2.5
    locked_by_another_connection.execute("COMMIT")
    # The lock it met left nothing behind: the next one runs.
    ran, _ = store.writer.run_now(lambda conn: conn.execute(BUMP))
    assert ran


async def test_a_claim_that_met_another_writer_waits_for_it_in_the_writer(
    store: SQLiteStore,
) -> None:
    await receiver(store)
    await publish(store, "hello")
    other = sqlite3.connect(
        store.data_dir / DATABASE_FILE, isolation_level=None, check_same_thread=False
    )
    try:
        other.execute("BEGIN IMMEDIATE")
        commit = threading.Timer(0.3, other.execute, ("COMMIT",))
        commit.start()
        deliveries = (await claim(store, T0 + 1)).deliveries
    finally:
        await asyncio.to_thread(commit.join)
        other.close()
    assert [d.body for d in deliveries] == ["hello"]


async def test_in_a_group_it_leaves_everything_to_the_writer(tmp_path: Path) -> None:
    with prepare_group(tmp_path) as lock:
        store = SQLiteStore(tmp_path, group_lock=lock.fileno())
        await store.open()
        try:
            assert store.writer.run_now(lambda conn: conn.execute(BUMP)) == (False, None)
            await receiver(store)
            await publish(store, "hello")
            batches = store.writer.batches
            deliveries = (await claim(store, T0 + 1)).deliveries
            assert [d.body for d in deliveries] == ["hello"]
            assert store.writer.batches == batches + 1  # the claim, in the writer
        finally:
            await store.close()


async def test_the_wal_is_still_checkpointed_when_everything_runs_at_once(
    store: SQLiteStore,
) -> None:
    # Its own commits never checkpoint (that flushes the disk, which the event loop
    # must not wait for); one operation in INLINE_TURNS_PER_CHECKPOINT (32) goes to the
    # writer, whose commit does when the WAL passed wal_autocheckpoint pages.
    transactions = 3_000
    for _ in range(transactions):
        ran, _ = store.writer.run_now(lambda conn: conn.execute(BUMP))
        if not ran:
            await store.writer.run(lambda conn: conn.execute(BUMP), durable=False)
    reader = sqlite3.connect(store.data_dir / DATABASE_FILE)
    try:
        # (busy, frames in the WAL now, frames checkpointed): without checkpoints the
        # WAL would hold a frame or more per transaction.
        _, frames, _ = reader.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    finally:
        reader.close()
    # SQLite checkpoints past 1,000 pages (its default wal_autocheckpoint); 3,000
    # transactions of a frame each would leave 3,000 without any.
    assert frames < 1_000 + 2 * 32
    assert delivered_counter(store.data_dir) == transactions
