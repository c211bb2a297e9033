"""Fixtures: a real broker process, real receivers, an HTTP client, a real PostgreSQL."""

from __future__ import annotations

import ast
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


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Under `-m "not slow"` (make check), a file whose every test is slow is not even
    imported: hypothesis and schemathesis alone are about a second of each worker's
    start. Without that expression (make test) every file is collected as before."""
    if collection_path.suffix != ".py" or not _deselects_slow(config.option.markexpr):
        return None
    return True if _wholly_slow(collection_path) else None


def _deselects_slow(markexpr: str) -> bool:
    # Only a plain conjunction with "not slow" as one of its terms deselects every slow
    # test whatever its other marks; anything with "or" or parentheses is left to pytest.
    if not markexpr or "(" in markexpr or " or " in f" {markexpr} ":
        return False
    return "not slow" in (" ".join(term.split()) for term in markexpr.split(" and "))


def _wholly_slow(path: Path) -> bool:
    """Whether the module marks all its tests slow: `pytestmark = pytest.mark.slow`, or a
    list or tuple holding it, assigned at module level."""
    source = path.read_text(encoding="utf-8")
    if "pytest.mark.slow" not in source:
        return False
    for statement in ast.parse(source, str(path)).body:
        if isinstance(statement, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "pytestmark"
            for target in statement.targets
        ):
            value = statement.value
            marks = value.elts if isinstance(value, (ast.List, ast.Tuple)) else [value]
            return any(ast.unparse(mark) == "pytest.mark.slow" for mark in marks)
    return False


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
