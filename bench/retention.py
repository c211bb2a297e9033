"""What --message-retention costs: disk per retained message, and the sweep.

`python -m bench.retention [--messages N] [--body BYTES] [--postgres]` fills a fresh
store through the store interface with N messages of BODY bytes, twice: once with no
subscription (each message is done when published) and once with one subscription
that acknowledged every message (each keeps a delivered delivery and its attempt).
It prints the bytes per retained message (SQLite: the database file after a WAL
checkpoint; PostgreSQL: pg_total_relation_size of messages, deliveries and
delivery_attempts, indexes and TOAST included), then sweeps them all while a
publisher publishes one message every 5 ms, and prints how long the sweep took and
the publishes' latency meanwhile against before.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg

from mqpy.model.domain import Mode, NewMessage
from mqpy.model.ids import new_message_ids
from mqpy.store.base import Store
from mqpy.store.postgres import PostgresStore
from mqpy.store.sqlite import SQLiteStore

BATCH = 500
PACE = 0.005  # the publisher's pause between messages during the sweep
TABLES = ("messages", "deliveries", "delivery_attempts")

Sizer = Callable[[], Coroutine[Any, Any, int]]


def new_message(body: str, topic: str = "retained") -> NewMessage:
    return NewMessage(new_message_ids(1)[0], topic, body, time.time(), None)


async def fill(store: Store, count: int, body: str, *, delivered: bool) -> int | None:
    """The retained messages; returns the subscription's id, if any."""
    receiver = None
    if delivered:
        receiver = await store.add_connection(
            Mode.RECEIVE, "http://127.0.0.1:9/r", "retained", time.time()
        )
    for start in range(0, count, BATCH):
        await store.publish([new_message(body) for _ in range(min(BATCH, count - start))])
        if delivered:
            claimed = await store.claim(
                limit=BATCH,
                now=time.time(),
                lease_seconds=60,
                per_subscription_limit=BATCH,
                busy={},
            )
            await asyncio.gather(
                *(store.ack(d, now=time.time(), status=200) for d in claimed.deliveries)
            )
    return None if receiver is None else receiver.id


async def publish_latencies(store: Store, stop: asyncio.Event) -> list[float]:
    """Publish one message every PACE seconds until `stop`; each publish's seconds."""
    taken = []
    while not stop.is_set():
        began = time.perf_counter()
        await store.publish([new_message("beside the sweep", "live")])
        taken.append(time.perf_counter() - began)
        await asyncio.sleep(PACE)
    return taken


async def measure(
    name: str, store: Store, size: Sizer, count: int, body: str, *, delivered: bool
) -> None:
    case = "one subscription, delivered" if delivered else "no subscription"
    before = await size()
    began = time.perf_counter()
    subscription = await fill(store, count, body, delivered=delivered)
    filled = time.perf_counter() - began
    grown = await size() - before
    print(
        f"{name}, {case}: {grown / count:,.0f} bytes per retained message "
        f"({grown / 1e6:,.1f} MB for {count:,}; filled in {filled:.1f} s)"
    )
    stop = asyncio.Event()
    publisher = asyncio.create_task(publish_latencies(store, stop))
    await asyncio.sleep(1.0)
    stop.set()
    quiet = await publisher
    if subscription is not None:
        for label, since in (("back to the earliest", 0.0), ("past now", time.time() + 60)):
            stop = asyncio.Event()
            publisher = asyncio.create_task(publish_latencies(store, stop))
            began = time.perf_counter()
            result = await store.seek(subscription, since, time.time())
            took = time.perf_counter() - began
            stop.set()
            print(
                f"  seek {label}: {took:.2f} s ({result}); publish latency meanwhile "
                f"{_figures(await publisher)}"
            )
    stop = asyncio.Event()
    publisher = asyncio.create_task(publish_latencies(store, stop))
    began = time.perf_counter()
    swept = await store.sweep(delivered_before=time.time(), dedup_before=0)
    took = time.perf_counter() - began
    stop.set()
    busy = await publisher
    print(
        f"  sweep of {swept:,}: {took:.2f} s; publish latency p50 / p99 / max (ms): quiet "
        f"{_figures(quiet)}, during the sweep {_figures(busy)} ({len(busy)} publishes)"
    )


def _figures(seconds: list[float]) -> str:
    ordered = sorted(seconds)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return " / ".join(f"{v * 1000:.1f}" for v in (statistics.median(ordered), p99, ordered[-1]))


@asynccontextmanager
async def sqlite_store(workdir: Path) -> AsyncIterator[tuple[Store, Sizer]]:
    store = SQLiteStore(workdir / "data")
    await store.open()

    async def size() -> int:
        # The WAL folded into the file: what the data takes at rest.
        def checkpoint() -> int:
            conn = sqlite3.connect(store.path)
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                conn.close()
            return store.path.stat().st_size

        await asyncio.sleep(0.2)  # the writer's last commit
        return await asyncio.to_thread(checkpoint)

    try:
        yield store, size
    finally:
        await store.close()


@asynccontextmanager
async def postgres_store() -> AsyncIterator[tuple[Store, Sizer]]:
    from tests.support.postgres import PostgresCluster

    cluster = PostgresCluster(durable=True).start()
    try:
        url = cluster.create_database()
        store = PostgresStore(url)
        await store.open()

        async def size() -> int:
            conn = await asyncpg.connect(url)
            try:
                total = await conn.fetchval(
                    "SELECT sum(pg_total_relation_size(t)) FROM unnest($1::regclass[]) AS t",
                    list(TABLES),
                )
            finally:
                await conn.close()
            return int(total)

        try:
            yield store, size
        finally:
            await store.close()
    finally:
        cluster.cleanup()


async def main(args: argparse.Namespace) -> None:
    body = "x" * args.body
    for delivered in (False, True):  # a fresh store each: freed pages would be reused
        with tempfile.TemporaryDirectory() as workdir:
            async with sqlite_store(Path(workdir)) as (store, size):
                await measure("SQLite", store, size, args.messages, body, delivered=delivered)
        if args.postgres:
            async with postgres_store() as (store, size):
                await measure("PostgreSQL", store, size, args.messages, body, delivered=delivered)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--body", type=int, default=100, help="bytes per message body")
    parser.add_argument("--postgres", action="store_true", help="also a throwaway PostgreSQL")
    asyncio.run(main(parser.parse_args()))
