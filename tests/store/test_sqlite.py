"""The SQLite store: the conformance suite on a real file, plus what only SQLite has."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mqpy.store.base import Store
from mqpy.store.sqlite import DATABASE_FILE, DataDirLocked, SQLiteStore
from mqpy.store.sqlite_schema import MIGRATIONS
from tests.store.conformance import (
    T0,
    Reopen,
    StoreConformance,
    claim_one,
    message,
    publish,
    receiver,
)


def open_files_under(directory: Path) -> list[str]:
    """Files under `directory` this process holds open (Linux only)."""
    fd_dir = Path("/proc/self/fd")
    if not fd_dir.is_dir():
        pytest.skip("needs /proc to list open files")
    held = []
    for fd in fd_dir.iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith(str(directory)):
                held.append(target)
    return held


class OpenStores:
    """Opens SQLite stores on one data directory and closes whatever is left open."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._open: list[SQLiteStore] = []

    async def open(self) -> SQLiteStore:
        store = SQLiteStore(self.data_dir)
        await store.open()
        self._open.append(store)
        return store

    async def close(self, store: Store) -> None:
        assert isinstance(store, SQLiteStore)
        self._open.remove(store)
        await store.close()

    async def close_all(self) -> None:
        while self._open:
            await self._open.pop().close()


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[OpenStores]:
    opened = OpenStores(tmp_path / "data")
    yield opened
    await opened.close_all()


class TestSQLiteStore(StoreConformance):
    @pytest.fixture
    async def store(self, stores: OpenStores) -> SQLiteStore:
        return await stores.open()

    @pytest.fixture
    def reopen(self, stores: OpenStores) -> Reopen:
        async def reopen(store: Store) -> Store:
            await stores.close(store)
            return await stores.open()

        return reopen

    # What only the SQLite backend has.

    async def test_wal_mode_and_full_sync(self, store: SQLiteStore, stores: OpenStores) -> None:
        synchronous = await store.writer.run(
            lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0]
        )
        assert synchronous == 2  # FULL
        await stores.close(store)
        conn = sqlite3.connect(stores.data_dir / DATABASE_FILE)
        try:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        finally:
            conn.close()

    async def test_concurrent_publishes_share_commits(self, store: SQLiteStore) -> None:
        await receiver(store)
        batches, operations = store.writer.batches, store.writer.operations
        counts = await asyncio.gather(*(store.publish(message(f"m{n}")) for n in range(500)))
        assert counts == [1] * 500
        assert store.writer.operations - operations == 500
        assert store.writer.batches - batches < 50

    async def test_a_second_store_on_the_same_data_dir_is_refused(
        self, store: SQLiteStore, stores: OpenStores
    ) -> None:
        with pytest.raises(DataDirLocked, match="another mq-py process"):
            await stores.open()
        # The first store is untouched, and the directory is free once it closes.
        assert await store.publish(message("still works")) == 0
        await stores.close(store)
        reopened = await stores.open()
        assert (await reopened.stats()).queue_length == 1

    async def test_a_fresh_database_gets_the_newest_schema(
        self, store: SQLiteStore, stores: OpenStores
    ) -> None:
        await stores.close(store)
        conn = sqlite3.connect(stores.data_dir / DATABASE_FILE)
        try:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        finally:
            conn.close()
        # Opening again migrates nothing and loses nothing.
        reopened = await stores.open()
        assert (await reopened.stats()).completed == 0

    async def test_a_database_from_a_newer_version_is_refused(self, stores: OpenStores) -> None:
        stores.data_dir.mkdir(parents=True)
        conn = sqlite3.connect(stores.data_dir / DATABASE_FILE)
        try:
            conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
        finally:
            conn.close()
        with pytest.raises(RuntimeError, match="newer mq-py"):
            await stores.open()
        # The refusal let go of the database file and of the data directory.
        assert open_files_under(stores.data_dir) == []
        conn = sqlite3.connect(stores.data_dir / DATABASE_FILE)
        try:
            conn.execute("PRAGMA user_version = 0")
        finally:
            conn.close()
        await stores.open()

    async def test_leases_of_a_dead_process_are_released_at_open(
        self, store: SQLiteStore, stores: OpenStores
    ) -> None:
        await receiver(store)
        await publish(store, "in flight when we died")
        first = await claim_one(store, T0)
        # Closing without releasing is what a crash leaves behind; only one process
        # may hold the data directory, so every lease found at open is orphaned.
        await stores.close(store)
        store = await stores.open()
        # At the very time of the claim, long before the lease would have run out.
        again = await claim_one(store, T0)
        assert again.message_id == first.message_id
        assert again.lease != first.lease
