"""Fixtures: a real broker process, real receivers, an HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.client import SeedClient
from tests.support.receiver import Behaviour, Receiver, accept
from tests.support.server import ServerProcess

ServerFactory = Callable[..., ServerProcess]
ReceiverFactory = Callable[..., Awaitable[Receiver]]


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
