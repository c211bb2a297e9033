"""Managing API keys: create (the key is shown once), list, revoke. Admin only."""

from __future__ import annotations

import time
from collections.abc import Callable

from mqpy.access import Access, Principal
from mqpy.broker import Broker, require_admin
from mqpy.domain import ApiKey, Role
from mqpy.keys import new_key
from mqpy.store import Store


class Keyring:
    """Keys in the store, mirrored into `Access` so requests are checked in memory."""

    def __init__(
        self,
        store: Store,
        access: Access,
        broker: Broker,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._access = access
        self._broker = broker
        self._clock = clock

    async def start(self) -> None:
        self._access.load(await self._store.keys())

    async def create(
        self, principal: Principal, role: Role, topics: tuple[str, ...]
    ) -> tuple[ApiKey, str]:
        require_admin(principal)
        record, token = new_key(role, topics, self._clock())
        await self._store.add_key(record)
        self._access.added(record)
        return record, token

    async def list(self, principal: Principal) -> list[ApiKey]:
        require_admin(principal)
        return await self._store.keys()

    async def revoke(self, principal: Principal, key_id: str) -> bool:
        require_admin(principal)
        revoked = await self._store.revoke_key(key_id, self._clock())
        self._access.revoked(key_id)
        if revoked:
            # A revoked key's receivers would otherwise go on being pushed messages.
            await self._broker.disconnect_key(key_id)
        return revoked
