"""The PostgreSQL store: the whole conformance suite on a real database, plus what
only a shared database has (several store objects, as several nodes, at once)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from mqpy.store.base import Store
from mqpy.store.postgres import PostgresStore
from tests.store.conformance import StoreConformance
from tests.store.support import Reopen


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


class TestPostgresStore(StoreConformance):
    @pytest.fixture
    async def store(self, stores: OpenStores) -> PostgresStore:
        return await stores.open()

    @pytest.fixture
    def reopen(self, stores: OpenStores) -> Reopen:
        async def reopen(store: Store) -> Store:
            await stores.close(store)
            return await stores.open()

        return reopen
