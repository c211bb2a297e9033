"""Fixtures: a real broker process, real receivers, an HTTP client, a real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from mqpy.store.postgres import PostgresStore
from tests.support import server as server_harness
from tests.support.client import SeedClient
from tests.support.postgres import PostgresCluster, throwaway_cluster
from tests.support.receiver import Behaviour, Receiver, accept
from tests.support.server import ServerProcess

ServerFactory = Callable[..., ServerProcess]
ReceiverFactory = Callable[..., Awaitable[Receiver]]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # MQPY_TEST_PROCESSES starts servers as groups, but not a one_process test's.
    server_harness.one_process_test = item.get_closest_marker("one_process") is not None


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """Start `mqpy serve` with extra arguments; every server is stopped at the end."""
    servers: list[ServerProcess] = []

    def start(
        *args: str, data_dir: Path | None = None, env: dict[str, str] | None = None
    ) -> ServerProcess:
        server = ServerProcess(data_dir or tmp_path / f"data{len(servers)}", args, env)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.kill()


@pytest.fixture
def server(start_server: ServerFactory) -> ServerProcess:
    """A broker with fast retries, so failure tests take seconds."""
    return start_server("--retry-base", "0.05", "--retry-max", "0.5")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def start_receiver() -> AsyncIterator[ReceiverFactory]:
    receivers: list[Receiver] = []

    async def start(behaviour: Behaviour = accept, port: int = 0) -> Receiver:
        receiver = Receiver(behaviour)
        receivers.append(receiver)
        return await receiver.start(port)

    yield start
    for receiver in receivers:
        await receiver.stop()


@pytest.fixture
async def receiver(start_receiver: ReceiverFactory) -> Receiver:
    return await start_receiver()


@pytest.fixture
def client(http: aiohttp.ClientSession, server: ServerProcess) -> SeedClient:
    return SeedClient(http, server.url)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One throwaway PostgreSQL server for the session, started by the first test that
    asks. Skipped where PostgreSQL is not installed, except under CI, where it must be."""
    with throwaway_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def postgres_template(postgres_cluster: PostgresCluster) -> str:
    """A database that mq-py has migrated, copied for each test: a copy takes a tenth
    of the time a migration does."""
    url = postgres_cluster.create_database()

    async def migrate() -> None:
        store = PostgresStore(url)
        await store.open()
        await store.close()

    asyncio.run(migrate())
    return url.rsplit("/", 1)[1]


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster, postgres_template: str) -> Iterator[str]:
    """A fresh database of its own for each test, holding mq-py's schema and nothing
    else, dropped afterwards."""
    yield from _database(postgres_cluster, postgres_template)


@pytest.fixture
def postgres_empty_url(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """A fresh, empty database of its own (no schema: for migration tests)."""
    yield from _database(postgres_cluster, None)


def _database(cluster: PostgresCluster, template: str | None) -> Iterator[str]:
    url = cluster.create_database(template)
    yield url
    if not cluster.running():  # a crash test left it down: the next test needs it
        cluster.start()
    cluster.drop_database(url.rsplit("/", 1)[1])
