"""The in-memory reference store: the conformance suite, and two views of one state
as two nodes sharing one store."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from mqpy.model.domain import ClaimOffer
from mqpy.store.base import Store
from mqpy.store.memory import MemoryStore
from mqpy.store.memory_state import MemoryState
from tests.store.conformance import StoreConformance
from tests.store.conformance_shared import SharedStoreConformance
from tests.store.support import LEASE, T0, Reopen


class TestMemoryStore(StoreConformance):
    @pytest.fixture
    async def store(self) -> AsyncIterator[MemoryStore]:
        store = MemoryStore()
        await store.open()
        yield store
        await store.close()

    @pytest.fixture
    def reopen(self) -> Reopen:
        async def reopen(store: Store) -> Store:
            # A restart: a new view of the same state.
            assert isinstance(store, MemoryStore)
            await store.close()
            again = MemoryStore(store.state)
            await again.open()
            return again

        return reopen

    async def test_it_takes_no_claim_offers(self, store: MemoryStore) -> None:
        # The dispatcher then claims only when woken, as it always did.
        offer = ClaimOffer(
            limit=1, lease_seconds=LEASE, per_subscription_limit=1, busy={}, clock=lambda: T0
        )
        assert not store.offer_claim(offer, lambda claim: None)
        assert store.withdraw_claim()


class TestTwoNodesOnOneState(SharedStoreConformance):
    @pytest.fixture
    async def nodes(self) -> AsyncIterator[tuple[MemoryStore, MemoryStore]]:
        state = MemoryState()
        a, b = MemoryStore(state), MemoryStore(state)
        await a.open()
        await b.open()
        yield a, b
        await a.close()
        await b.close()
