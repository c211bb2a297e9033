"""GET /healthz and GET /readyz through the real server: alive while the process runs,
ready only while the store answers."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import aiohttp

from mqpy.store.sqlite import DATABASE_FILE
from tests.conftest import ServerFactory
from tests.support.client import SeedClient
from tests.support.full_disk import fill, free, tiny_tmpfs
from tests.support.postgres import PostgresCluster
from tests.support.problems import check_problem
from tests.support.server import ServerProcess

ADMIN_ENV = {"MQPY_ADMIN_KEY": "test-admin-key-health-9c1d"}


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, str, bytes]:
    async with http.get(url) as response:
        return response.status, response.content_type, await response.read()


async def wait_ready(http: aiohttp.ClientSession, url: str, after: str) -> None:
    """Poll /readyz until it answers 200; fails saying what it should have been ready
    after."""
    deadline = time.monotonic() + 15
    while (await get(http, url + "/readyz"))[0] != 200:
        assert time.monotonic() < deadline, f"still not ready after {after}"
        await asyncio.sleep(0.2)


async def test_probes_answer_without_a_key(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = start_server(env=ADMIN_ENV)
    for path in ("/healthz", "/healthz/"):
        async with http.get(server.url + path) as response:
            assert response.status == 200, path
            assert await response.json() == {"status": "ok"}
    async with http.head(server.url + "/healthz") as response:
        assert response.status == 200
    async with http.get(server.url + "/readyz") as response:
        assert response.status == 200
        assert await response.json() == {"status": "ready"}


async def test_not_ready_while_the_store_cannot_write(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server: ServerProcess = start_server()
    assert (await get(http, server.url + "/readyz"))[0] == 200
    # Another connection holds the database's write lock, as a stuck disk or a
    # runaway backup would: the broker's writer cannot start a transaction.
    blocker = sqlite3.connect(server.data_dir / DATABASE_FILE, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        status, content_type, body = await get(http, server.url + "/readyz")
        problem = check_problem(status, content_type, body, 503)
        assert "store" in problem["detail"], problem
        assert time.monotonic() - started < 5, "readyz must answer within its own timeout"
        # Not ready is not dead: the process still answers its liveness probe.
        assert (await get(http, server.url + "/healthz"))[0] == 200
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    await wait_ready(http, server.url, "the lock was released")


async def test_not_ready_while_the_disk_is_full_and_ready_once_it_is_freed(
    start_server: ServerFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    # A full disk fails every publish while reads still work: a plain ping said ready,
    # and a load balancer kept sending publishes that could not be stored.
    with tiny_tmpfs(tmp_path / "disk") as disk:
        server = start_server(data_dir=disk / "data")
        client = SeedClient(http, server.url)
        sender = await client.connect_sender()
        assert (await get(http, server.url + "/readyz"))[0] == 200
        fill(disk)
        statuses = []
        for number in range(200):  # the WAL's spare room may take a few first
            async with http.post(
                server.url + "/send", json={"id": sender, "body": f"{number}" + "x" * 8000}
            ) as response:
                statuses.append(response.status)
                if response.status == 503:
                    break
        assert statuses[-1] == 503, f"no publish failed on a full disk: {statuses}"
        status, content_type, body = await get(http, server.url + "/readyz")
        problem = check_problem(status, content_type, body, 503)
        assert "cannot write" in problem["detail"], problem
        assert (await get(http, server.url + "/healthz"))[0] == 200
        free(disk)
        await wait_ready(http, server.url, "the disk was freed")
        await client.send(sender, "stored again")
        server.kill()


async def test_postgres_not_ready_while_the_database_refuses_writes(
    start_server: ServerFactory,
    http: aiohttp.ClientSession,
    postgres_url: str,
    postgres_cluster: PostgresCluster,
) -> None:
    # The PostgreSQL twin of the full disk above: reads work, writes do not (here the
    # database is made read-only, as a demoted primary is). A plain SELECT 1 said ready.
    database = postgres_url.rsplit("/", 1)[1]
    server = start_server("--store", postgres_url)
    client = SeedClient(http, server.url)
    sender = await client.connect_sender()
    assert (await get(http, server.url + "/readyz"))[0] == 200

    def read_only(on: bool) -> None:
        setting = "SET default_transaction_read_only = on" if on else "RESET ALL"
        postgres_cluster.psql(f'ALTER DATABASE "{database}" {setting}')
        # The setting takes hold on new sessions: end the broker's.
        postgres_cluster.psql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{database}' AND pid <> pg_backend_pid()"
        )

    read_only(True)
    deadline = time.monotonic() + 15
    while True:  # a publish on a terminated session may fail for that reason instead
        status, answer = await client.post("/send", {"id": sender, "body": "refused"})
        assert status == 503, answer
        assert answer["type"].endswith("store-unavailable"), answer
        status, content_type, body = await get(http, server.url + "/readyz")
        if status != 200:
            break
        assert time.monotonic() < deadline, "ready while every publish is refused"
        await asyncio.sleep(0.1)
    problem = check_problem(status, content_type, body, 503)
    assert "cannot write" in problem["detail"], problem
    read_only(False)
    await wait_ready(http, server.url, "writes were allowed again")
    await client.send(sender, "stored again")
