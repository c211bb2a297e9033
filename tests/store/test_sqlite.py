"""The SQLite store: the conformance suite on a real file, plus what only SQLite has."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mqpy.model.domain import EARLIEST, DeliveryState, SubscriptionKind
from mqpy.model.errors import BacklogFull, SchemaTooNew, StoreLocked
from mqpy.store.base import Store
from mqpy.store.sqlite import DATABASE_FILE, SWEEP_CHUNK, SQLiteStore, prepare_group
from mqpy.store.sqlite_schema import MIGRATIONS
from tests.store.conformance import StoreConformance
from tests.store.conformance_offers import OfferConformance
from tests.store.conformance_shared import SharedOfferConformance, SharedStoreConformance
from tests.store.support import (
    T0,
    Reopen,
    ack_all,
    claim,
    claim_one,
    message,
    publish,
    publish_count,
    receiver,
    subscribe,
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


class TestTwoProcessesOnOneDirectory(SharedStoreConformance, SharedOfferConformance):
    """Two store objects of one `--processes` group on one data directory (the lock
    handed down by the group's supervisor, as `mqpy serve --processes 2` does), racing
    as its two processes would."""

    @pytest.fixture
    async def nodes(self, tmp_path: Path) -> AsyncIterator[tuple[SQLiteStore, SQLiteStore]]:
        with prepare_group(tmp_path) as lock:
            a = SQLiteStore(tmp_path, group_lock=lock.fileno())
            b = SQLiteStore(tmp_path, group_lock=lock.fileno())
            await a.open()
            try:
                await b.open()
                try:
                    yield a, b
                finally:
                    await b.close()
            finally:
                await a.close()


class TestSQLiteStore(StoreConformance, OfferConformance):
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
        counts = await asyncio.gather(*(publish_count(store, message(f"m{n}")) for n in range(500)))
        assert counts == [1] * 500
        assert store.writer.operations - operations == 500
        assert store.writer.batches - batches < 50

    async def test_a_sweep_goes_on_past_one_chunk(self, store: SQLiteStore) -> None:
        await receiver(store)
        count = SWEEP_CHUNK * 2 + 7
        keyed = [message(f"m{n}", idempotency_key=f"k{n}") for n in range(count)]
        await store.publish(keyed)
        claimed = await claim(store, T0, limit=count, per_subscription_limit=count)
        await ack_all(store, claimed.deliveries, T0)
        assert await store.sweep(delivered_before=T0 + 1, dedup_before=T0 + 1) == count
        assert await store.message(keyed[-1].id, T0) is None
        # Every key went too: the same key publishes anew.
        (again,) = await store.publish([message("again", idempotency_key="k0")])
        assert not again.duplicate

    async def test_a_second_store_on_the_same_data_dir_is_refused(
        self, store: SQLiteStore, stores: OpenStores
    ) -> None:
        with pytest.raises(StoreLocked, match="another mq-py process"):
            await stores.open()
        # The first store is untouched, and the directory is free once it closes.
        kept = message("still works")
        assert await publish_count(store, kept) == 0
        await stores.close(store)
        reopened = await stores.open()
        assert await reopened.message(kept.id, T0) is not None

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
        with pytest.raises(SchemaTooNew, match="newer mq-py"):
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

    async def test_a_version_2_database_opens_with_its_work_intact(
        self, stores: OpenStores
    ) -> None:
        write_version_2_database(stores.data_dir)
        store = await stores.open()
        (delivery,) = (await claim(store, T0 + 10)).deliveries
        assert (delivery.message_id, delivery.body, delivery.attempt) == ("msg_v2_pending", "hi", 1)
        assert (delivery.subscription_id, delivery.url) == (V2_RECEIVER, "http://127.0.0.1:9/v2")
        assert (delivery.topic, delivery.secrets) == ("orders", ("whsec_v2",))
        (listed,) = (await store.subscriptions()).items
        assert (listed.id, listed.connection_id, listed.key_id) == (
            V2_RECEIVER,
            V2_RECEIVER,
            "key_v2",
        )
        assert (listed.spec.url, listed.spec.topic, listed.spec.group) == (
            "http://127.0.0.1:9/v2",
            "orders",
            None,
        )
        assert listed.spec.kind is SubscriptionKind.PUSH  # schema 8 made every old one push
        assert {c.id for c in await store.connections()} == {V2_RECEIVER, V2_SENDER}
        assert [d.message_id for d in (await store.dead_letters()).items] == ["msg_v2_dead"]
        topic = await store.topic("orders")
        assert topic is not None
        assert (topic.published, topic.backlog, topic.subscriptions) == (2, 1, 1)
        await store.ack(delivery, now=T0 + 11, status=200)
        kept = await store.message("msg_v2_pending", T0 + 12)
        assert kept is not None
        assert [(d.subscription_id, d.state) for d in kept.deliveries] == [
            (V2_RECEIVER, DeliveryState.DELIVERED)
        ]
        # The dead letter still counts toward the backlog limit; the delivered one not.
        with pytest.raises(BacklogFull):
            await store.publish([message("over", topic="orders")], max_backlog=1)
        assert await publish_count(store, message("fits", topic="orders")) == 1

    async def test_messages_waiting_for_a_first_receiver_are_done_after_the_upgrade(
        self, stores: OpenStores
    ) -> None:
        # At the last schema with a `waiting` table: two messages wait for a first
        # receiver, and one was routed and is pending (for a paused subscription).
        stores.data_dir.mkdir(parents=True)
        conn = sqlite3.connect(stores.data_dir / DATABASE_FILE)
        try:
            for number, script in enumerate(MIGRATIONS[:LAST_WITH_WAITING], start=1):
                conn.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")
            conn.executescript(
                f"""
                BEGIN;
                INSERT INTO subscriptions (id, topic, url, created_at, paused)
                    VALUES (7, 'routed', 'http://127.0.0.1:9/old', {T0}, 1);
                INSERT INTO messages (seq, id, topic, body, published_at, routed)
                    VALUES (1, 'msg_old_waiting', 'orders', 'early', {T0}, 1),
                    (2, 'msg_old_other', 'audit', 'elsewhere', {T0}, 1),
                    (3, 'msg_old_pending', 'routed', 'pending', {T0}, 1);
                INSERT INTO waiting (seq, topic) VALUES (1, 'orders'), (2, 'audit');
                INSERT INTO deliveries (message_seq, subscription_id, state, due_at)
                    VALUES (3, 7, 'pending', {T0});
                INSERT INTO topics (name, first_seen, published)
                    VALUES ('orders', {T0}, 1), ('audit', {T0}, 1), ('routed', {T0}, 1);
                UPDATE counters SET value = 3 WHERE name = 'messages';
                COMMIT;
                """
            )
        finally:
            conn.close()
        upgraded_at = time.time()
        store = await stores.open()
        # Done: no longer backlog, no longer counted towards --max-backlog.
        assert (await store.stats()).queue_length == 1
        assert [(b.topic, b.messages) for b in await store.topic_backlogs()] == [("routed", 1)]
        assert len(await store.publish([message("fits", topic="x")], max_backlog=2)) == 1
        with pytest.raises(BacklogFull):
            await store.publish([message("over", topic="routed")], max_backlog=1)
        # A receiver connecting now gets none of them; one starting earlier does.
        await receiver(store, topic="orders", now=upgraded_at)
        assert (await claim(store, upgraded_at)).deliveries == []
        await subscribe(store, "orders", now=upgraded_at, start_at=EARLIEST)
        (delivery,) = (await claim(store, upgraded_at)).deliveries
        assert (delivery.message_id, delivery.body) == ("msg_old_waiting", "early")
        # Kept a whole retention window from the upgrade, not from their publishing.
        # (`fits` was done when published, at T0.)
        assert await store.sweep(delivered_before=upgraded_at - 1, dedup_before=0) == 1
        assert await store.sweep(delivered_before=time.time() + 1, dedup_before=0) == 1
        assert await store.message("msg_old_other", T0) is None

    async def test_connecting_a_receiver_does_not_rewrite_the_retained_bodies(
        self, store: SQLiteStore
    ) -> None:
        # Bookkeeping stays out of the rows that hold bodies: 2,000 waiting 8 KB
        # messages once made one connect write 25 MB, more than a nearly full disk had.
        bodies = 300 * 8192
        await store.publish([message("x" * 8192, topic="orders") for _ in range(300)])
        before = written_bytes()
        await receiver(store, topic="orders")
        written = written_bytes() - before
        assert written < bodies / 10, f"a connect wrote {written} bytes for {bodies} of bodies"
        assert (await claim(store, T0 + 1)).deliveries == []


def written_bytes() -> int:
    """Bytes this process has handed to write() so far (Linux only)."""
    try:
        io = Path("/proc/self/io").read_text()
    except OSError:
        pytest.skip("needs /proc/self/io to count bytes written")
    return int(next(line.split()[1] for line in io.splitlines() if line.startswith("wchar:")))


# The last schema with a `waiting` table of messages no subscription had taken.
LAST_WITH_WAITING = 8

V2_RECEIVER = 4_503_599_627_370_001
V2_SENDER = 4_503_599_627_370_002


def write_version_2_database(data_dir: Path) -> None:
    """A data directory as mq-py wrote it at schema 2: one receiver with a pending
    delivery and a dead letter, one sender."""
    data_dir.mkdir(parents=True)
    conn = sqlite3.connect(data_dir / DATABASE_FILE)
    try:
        for number, script in enumerate(MIGRATIONS[:2], start=1):
            conn.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")
        conn.executescript(
            f"""
            BEGIN;
            INSERT INTO connections (id, mode, client_url, topic, connected_at, key_id)
                VALUES ({V2_RECEIVER}, 'receive', 'http://127.0.0.1:9/v2', 'orders', {T0},
                'key_v2'),
                ({V2_SENDER}, 'send', '', 'orders', {T0}, 'key_v2');
            INSERT INTO subscriptions (id, topic, url, created_at, active, secret)
                VALUES ({V2_RECEIVER}, 'orders', 'http://127.0.0.1:9/v2', {T0}, 1,
                'whsec_v2');
            INSERT INTO messages (seq, id, topic, body, publisher_id, published_at, routed)
                VALUES (1, 'msg_v2_pending', 'orders', 'hi', {V2_SENDER}, {T0}, 1),
                (2, 'msg_v2_dead', 'orders', 'poison', {V2_SENDER}, {T0}, 1);
            INSERT INTO deliveries (message_seq, subscription_id, state, attempts, due_at)
                VALUES (1, {V2_RECEIVER}, 'pending', 0, {T0});
            INSERT INTO deliveries (message_seq, subscription_id, state, attempts, due_at,
                last_error, last_status, dead_at)
                VALUES (2, {V2_RECEIVER}, 'dead', 3, {T0}, 'HTTP 500', 500, {T0 + 1});
            UPDATE counters SET value = 2 WHERE name = 'messages';
            COMMIT;
            """
        )
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    finally:
        conn.close()
