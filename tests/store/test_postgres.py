"""The PostgreSQL store: the whole conformance suite on a real database, plus what
only a shared database has (several store objects, as several nodes, at once)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from mqpy.model.domain import EARLIEST, SeekResult
from mqpy.model.errors import SchemaTooNew, StoreUnavailable
from mqpy.store import postgres as postgres_module
from mqpy.store.base import Store
from mqpy.store.postgres import PostgresStore
from mqpy.store.postgres_schema import MIGRATIONS
from tests.store.conformance import StoreConformance
from tests.store.conformance_offers import OfferConformance
from tests.store.conformance_shared import SharedOfferConformance, SharedStoreConformance
from tests.store.support import (
    LEASE,
    T0,
    Reopen,
    ack_all,
    bodies,
    claim,
    message,
    publish,
    publish_count,
    receiver,
    subscribe,
)


class OpenStores:
    """Opens PostgreSQL stores on one database and closes whatever is left open."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._open: list[PostgresStore] = []

    async def open(self) -> PostgresStore:
        store = PostgresStore(self.url)
        await store.open()
        self._open.append(store)
        return store

    async def close(self, store: Store) -> None:
        assert isinstance(store, PostgresStore)
        self._open.remove(store)
        await store.close()

    async def close_all(self) -> None:
        while self._open:
            await self._open.pop().close()


@pytest.fixture
async def stores(postgres_url: str) -> AsyncIterator[OpenStores]:
    opened = OpenStores(postgres_url)
    yield opened
    await opened.close_all()


class TestPostgresStore(StoreConformance, OfferConformance):
    @pytest.fixture
    async def store(self, stores: OpenStores) -> PostgresStore:
        return await stores.open()

    @pytest.fixture
    def reopen(self, stores: OpenStores) -> Reopen:
        async def reopen(store: Store) -> Store:
            await stores.close(store)
            return await stores.open()

        return reopen


class TestTwoNodesOnOneDatabase(SharedStoreConformance, SharedOfferConformance):
    """Two store objects on one database race as two broker nodes would: the hazards
    a single store object, serialising its own calls, can never show."""

    @pytest.fixture
    async def nodes(self, stores: OpenStores) -> tuple[PostgresStore, PostgresStore]:
        return await stores.open(), await stores.open()

    async def test_racing_publishers_of_one_key_keep_each_ones_order(
        self, nodes: tuple[PostgresStore, PostgresStore]
    ) -> None:
        a, b = nodes
        await subscribe(a)

        async def publish_run(node: PostgresStore, name: str) -> None:
            for n in range(40):
                await publish(node, f"{name}{n:02d}", ordering_key="k")

        await asyncio.gather(publish_run(a, "a"), publish_run(b, "b"))
        seen: list[str] = []
        for step in range(80):
            # Both nodes ask at once: only the key's head may go, to one of them.
            claims = await asyncio.gather(claim(a, T0 + step), claim(b, T0 + step))
            handed = [d for c in claims for d in c.deliveries]
            assert len(handed) == 1, handed
            seen.append(handed[0].body)
            await (a if handed[0] in claims[0].deliveries else b).ack(
                handed[0], now=T0 + step, status=200
            )
        assert [s for s in seen if s[0] == "a"] == [f"a{n:02d}" for n in range(40)]
        assert [s for s in seen if s[0] == "b"] == [f"b{n:02d}" for n in range(40)]

    async def test_members_joining_one_group_through_two_nodes_share_it(
        self, nodes: tuple[PostgresStore, PostgresStore]
    ) -> None:
        a, b = nodes
        members = await asyncio.gather(
            *(subscribe(node, "orders", group="billing") for node in [a, b] * 3)
        )
        for n in range(6):
            await publish(b, f"o{n}", topic="orders")
        claimed = (await claim(a, T0)).deliveries
        assert sorted(d.body for d in claimed) == [f"o{n}" for n in range(6)]
        assert {d.subscription_id for d in claimed} == {m.id for m in members}

    async def test_a_subscription_made_on_one_node_routes_the_others_next_publish(
        self, nodes: tuple[PostgresStore, PostgresStore]
    ) -> None:
        a, b = nodes
        await subscribe(b, "early")
        assert await publish_count(b, message("before", topic="t")) == 0  # done
        made = await subscribe(a, "t", start_at=EARLIEST)  # b's cached routes are now stale
        assert await publish_count(b, message("after", topic="t")) == 1
        assert sorted(bodies(await claim(b, T0))) == ["after", "before"]
        assert {d.subscription_id for d in (await claim(a, T0 + LEASE + 1)).deliveries} == {made.id}

    async def test_a_seek_through_one_node_is_claimed_through_the_other(
        self, nodes: tuple[PostgresStore, PostgresStore]
    ) -> None:
        a, b = nodes
        sub = await subscribe(a)
        for n in range(4):
            await publish(b, f"m{n}", at=T0 + n)
        await ack_all(b, (await claim(b, T0 + 4)).deliveries, T0 + 4)
        assert await a.seek(sub.id, T0 + 2, T0 + 10) == SeekResult(due=2, acked=0, in_flight=0)
        assert bodies(await claim(b, T0 + 10)) == ["m2", "m3"]
        # And a start_at through one node replays what the other accepted.
        await publish(b, "nobody took it", "later", at=T0 + 11)
        await subscribe(b, "later", now=T0 + 12, start_at=EARLIEST)
        assert bodies(await claim(a, T0 + 12)) == ["nobody took it"]

    async def test_racing_seeks_and_acks_leave_no_replayed_message_done(
        self, nodes: tuple[PostgresStore, PostgresStore]
    ) -> None:
        # Two subscriptions share each message: acks of one's deliveries (on b) would
        # finish messages whose other delivery a seek (on a) is making due again.
        a, b = nodes
        sought = await subscribe(a)
        await subscribe(a)
        for n in range(100):
            await publish(a, f"m{n}", at=T0 + n)
        first = (await claim(a, T0 + 100, limit=1000)).deliveries
        await ack_all(a, [d for d in first if d.subscription_id == sought.id], T0 + 100)
        others = [d for d in first if d.subscription_id != sought.id]
        await asyncio.gather(
            a.seek(sought.id, EARLIEST, T0 + 101),
            *(b.ack(d, now=T0 + 101, status=200) for d in others),
        )
        again = (await claim(b, T0 + 102, limit=1000)).deliveries
        assert sorted(d.body for d in again) == sorted(f"m{n}" for n in range(100))
        # Every message waits for its replayed delivery: nothing is swept.
        assert await a.sweep(delivered_before=T0 + 10_000, dedup_before=0) == 0
        assert (await b.stats()).queue_length == 100

    async def test_receivers_connecting_on_one_node_as_the_other_publishes_get_what_follows(
        self, nodes: tuple[PostgresStore, PostgresStore]
    ) -> None:
        # What a benchmark with several processes does: receivers connect through one
        # node while the other node publishes and claims, its route table in use.
        a, b = nodes
        connected = 0  # receivers whose connect has returned
        stop = asyncio.Event()
        short: list[tuple[int, int]] = []

        async def publisher(worker: int) -> None:
            n = 0
            while not stop.is_set():
                expected = connected
                n += 1
                got = await publish_count(b, message(f"w{worker}-{n}"))
                if got < expected:
                    short.append((expected, got))

        async def claimer() -> None:
            while not stop.is_set():
                await claim(b, T0, limit=10)

        tasks = [asyncio.create_task(publisher(w)) for w in range(8)]
        tasks.append(asyncio.create_task(claimer()))
        for _ in range(16):
            await receiver(a)
            connected += 1
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*tasks)
        assert short == []

    async def test_the_last_two_deliveries_acked_on_two_nodes_finish_the_message(
        self, nodes: tuple[PostgresStore, PostgresStore]
    ) -> None:
        a, b = nodes
        await receiver(a)
        await receiver(a)
        for round_ in range(20):
            await publish(a, f"m{round_}", at=T0 + round_)
            first, second = (await claim(a, T0 + round_)).deliveries
            await asyncio.gather(
                a.ack(first, now=T0 + round_, status=200),
                b.ack(second, now=T0 + round_, status=200),
            )
        assert await a.topic_backlogs() == []
        assert (await b.stats()).queue_length == 0
        # Every message is done, so all of them are swept.
        assert await b.sweep(delivered_before=T0 + 100, dedup_before=T0) == 20

    async def test_racing_claims_hand_out_each_group_delivery_once(
        self, nodes: tuple[PostgresStore, PostgresStore]
    ) -> None:
        a, b = nodes
        for node in (a, b, a):
            await subscribe(node, "orders", group="g")
        await asyncio.gather(*(publish(a if n % 2 else b, f"m{n}", "orders") for n in range(300)))
        handed: list[str] = []

        async def drain(node: PostgresStore) -> None:
            for step in range(40):
                claimed = await claim(node, T0 + step, limit=7, per_subscription_limit=3)
                handed.extend(d.message_id for d in claimed.deliveries)
                for delivery in claimed.deliveries:
                    await node.ack(delivery, now=T0 + step, status=200)

        await asyncio.gather(drain(a), drain(b), drain(a), drain(b))
        assert len(handed) == len(set(handed)) == 300


async def test_nodes_opening_an_empty_database_together_migrate_it_once(
    postgres_empty_url: str,
) -> None:
    stores = OpenStores(postgres_empty_url)
    opened = await asyncio.gather(*(stores.open() for _ in range(4)))
    for store in opened:
        await store.ping()
    conn = await asyncpg.connect(stores.url)
    try:
        versions = await conn.fetch("SELECT version FROM mqpy_schema ORDER BY version")
    finally:
        await conn.close()
        await stores.close_all()
    assert [row[0] for row in versions] == list(range(1, len(MIGRATIONS) + 1))


async def test_a_database_from_a_newer_mq_py_is_refused(stores: OpenStores) -> None:
    await (await stores.open()).ping()
    conn = await asyncpg.connect(stores.url)
    try:
        await conn.execute("INSERT INTO mqpy_schema (version) VALUES ($1)", len(MIGRATIONS) + 1)
    finally:
        await conn.close()
    with pytest.raises(SchemaTooNew, match="newer mq-py"):
        await stores.open()


# The last schema whose messages had a `routed` flag (unrouted: waiting for a first
# receiver).
LAST_WITH_ROUTED = 4


async def test_messages_waiting_for_a_first_receiver_are_done_after_the_upgrade(
    postgres_empty_url: str,
) -> None:
    conn = await asyncpg.connect(postgres_empty_url)
    try:
        await conn.execute("CREATE TABLE mqpy_schema (version integer NOT NULL)")
        for number, script in enumerate(MIGRATIONS[:LAST_WITH_ROUTED], start=1):
            await conn.execute(script)
            await conn.execute("INSERT INTO mqpy_schema (version) VALUES ($1)", number)
        await conn.execute(
            f"""
            INSERT INTO messages (id, topic, body, published_at, routed)
                VALUES ('msg_old_waiting', 'orders', 'early', {T0}, false),
                ('msg_old_other', 'audit', 'elsewhere', {T0}, false);
            INSERT INTO topics (name, first_seen) VALUES ('orders', {T0}), ('audit', {T0});
            UPDATE tallies SET stored = 2 WHERE slot = 3;
            """
        )
    finally:
        await conn.close()
    upgraded_at = time.time()
    store = PostgresStore(postgres_empty_url)
    await store.open()
    try:
        assert (await store.stats()).queue_length == 0
        assert await store.topic_backlogs() == []
        assert len(await store.publish([message("fits")], max_backlog=1)) == 1
        await receiver(store, topic="orders", now=upgraded_at)
        assert (await claim(store, upgraded_at)).deliveries == []
        await subscribe(store, "orders", now=upgraded_at, start_at=EARLIEST)
        (delivery,) = (await claim(store, upgraded_at)).deliveries
        assert (delivery.message_id, delivery.body) == ("msg_old_waiting", "early")
        # Kept a whole retention window from the upgrade (`fits` was done at T0).
        assert await store.sweep(delivered_before=upgraded_at - 1, dedup_before=0) == 1
        assert await store.sweep(delivered_before=time.time() + 1, dedup_before=0) == 1
        assert await store.message("msg_old_other", T0) is None
    finally:
        await store.close()


async def test_an_unreachable_database_is_unavailable_not_a_crash(postgres_url: str) -> None:
    store = PostgresStore(postgres_url.replace(postgres_url.split("/")[2], "127.0.0.1:1"))
    with pytest.raises(StoreUnavailable, match="cannot reach PostgreSQL"):
        await store.open()


async def test_a_publish_or_a_catalog_change_on_one_node_wakes_the_other(
    stores: OpenStores,
) -> None:
    a, b = await stores.open(), await stores.open()
    due, catalog = asyncio.Event(), asyncio.Event()
    b.watch(on_due=due.set, on_catalog=catalog.set)
    # Once connected, the listener wakes both, for whatever it may have missed.
    await asyncio.wait_for(asyncio.gather(due.wait(), catalog.wait()), 5.0)
    due.clear()
    catalog.clear()
    await publish(a, "nobody takes this yet")  # no deliveries: no wake-up is owed
    await subscribe(a)
    await asyncio.wait_for(catalog.wait(), 2.0)
    assert not due.is_set()
    await publish(a, "for the new subscription")
    await asyncio.wait_for(due.wait(), 2.0)


class _HostClockAnHourAhead:
    """The `time` module as a host whose clock runs an hour ahead of the database's."""

    @staticmethod
    def time() -> float:
        return time.time() + 3600.0


async def test_the_clock_follows_the_databases_from_the_open_on(
    stores: OpenStores, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres_module, "time", _HostClockAnHourAhead)
    store = await stores.open()
    # No heartbeat yet: the first claims already lease by the database's clock.
    assert abs(store.clock() - time.time()) < 1.0


async def test_closing_the_store_stops_listening(stores: OpenStores) -> None:
    store = await stores.open()
    heard = asyncio.Event()
    store.watch(on_due=heard.set, on_catalog=heard.set)
    await asyncio.wait_for(heard.wait(), 5.0)  # the listener is connected
    await stores.close(store)
    conn = await asyncpg.connect(stores.url)
    try:
        others = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()
    assert others == 0, "a connection of the closed store is still open"
