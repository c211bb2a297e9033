"""Managing API keys: create (the key is shown once), list, revoke. Admin only."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from mqpy.auth.access import Access, Principal
from mqpy.auth.keys import new_key, split_key
from mqpy.core.broker import Broker, require_admin
from mqpy.core.group_state import GroupState
from mqpy.model.domain import ApiKey, Role
from mqpy.store import Store

log = logging.getLogger("mqpy.server")


class KeyRegistry:
    """Keys in the store, mirrored into `Access` so requests are checked in memory.

    Other nodes sharing the store create and revoke keys too: `reload` (called by
    `peers.CatalogSync` when the store's catalog version moves) mirrors them again, and
    `recheck` reads them at once when a request names a key this process does not know:
    a client that created a key through one process of a group (or one node) and uses it
    straight away may reach another before the news of it does. The first key turns
    authentication on: in a group, the process that stores one says so in the group's
    shared memory before it answers, and `first_key_made_elsewhere` lets the others
    see it before they let the next caller without a key in."""

    def __init__(
        self,
        store: Store,
        access: Access,
        broker: Broker,
        clock: Callable[[], float] = time.time,
        group: GroupState | None = None,
    ) -> None:
        """`group`: the shared memory of this process's `--processes` group, if any."""
        self._store = store
        self._access = access
        self._broker = broker
        self._clock = clock
        self._group = group
        # While `reload` reads the store: the keys this process created or revoked
        # meanwhile, whose state here may be newer than what the reload read.
        self._touched: set[str] | None = None
        # One reload at a time, numbered as they start; `_read` is the number of the
        # last one finished, so a recheck can tell whether one began after it asked.
        self._reloading = asyncio.Lock()
        self._started = 0
        self._read = 0

    async def start(self) -> None:
        await self.reload()

    async def reload(self) -> bool:
        """Mirror the store's keys again. A key another node revoked is refused from
        now on, and what it connected is disconnected here too (a connection made
        through this node just before the revocation reached it would otherwise
        stay). False if this process changed keys while the store was read."""
        async with self._reloading:
            return await self._reload()

    async def recheck(self, token: str) -> None:
        """Read the store's keys again if `token` is well formed and names a key this
        process does not know, unless a reload that began after this call has read
        them already: misses arriving together share one read."""
        parts = split_key(token)
        if parts is None or parts[0] in self._access.key_ids():
            return
        wanted = self._started + 1  # a reload starting from now on will do
        async with self._reloading:
            if self._read < wanted:
                await self._reload()

    def first_key_made_elsewhere(self) -> bool:
        """Whether access is open here although another process of the group has
        stored a key: then `follow_first_key` before letting a caller without a key
        in. One read of shared memory: this is asked of every request."""
        return self._group is not None and not self._access.enabled and self._group.key_made()

    async def follow_first_key(self) -> None:
        """Read the keys another process of the group began with; requests waiting
        together share one read. Keys are required from now on even if that one was
        revoked meanwhile: once required, they stay required (auth/access.py)."""
        async with self._reloading:
            if not self._access.enabled:
                await self._reload()
                self._access.require()

    async def _reload(self) -> bool:
        self._started += 1
        number = self._started
        self._touched = set()
        try:
            keys = await self._store.keys()
            touched = self._touched
        finally:
            self._touched = None
        known = self._access.key_ids()
        was_open = not self._access.enabled
        self._access.load(keys, keep=touched)
        if was_open and self._access.enabled:
            log.warning(
                "another node created the first key: API keys are now on, and every caller "
                "needs one from now on (401 without)"
            )
        self._read = number
        for key_id in sorted(known - self._access.key_ids()):
            await self._broker.disconnect_key(key_id)
        return not touched

    def _touch(self, key_id: str) -> None:
        if self._touched is not None:
            self._touched.add(key_id)

    async def create(
        self, principal: Principal, role: Role, topics: tuple[str, ...]
    ) -> tuple[ApiKey, str]:
        require_admin(principal)
        record, token = new_key(role, topics, self._clock())
        was_open = not self._access.enabled
        await self._store.add_key(record)
        self._access.added(record)
        self._touch(record.id)
        if self._group is not None:
            self._group.note_key_made()  # before the answer: see the class's docstring
        if was_open:
            log.warning(
                "key %s (%s) is the first key: API keys are now on, and every caller needs "
                "one from now on, senders and receivers already connected included (401 "
                "without)",
                record.id,
                role.value,
            )
        return record, token

    async def list(self, principal: Principal) -> list[ApiKey]:
        require_admin(principal)
        return await self._store.keys()

    async def revoke(self, principal: Principal, key_id: str) -> bool:
        require_admin(principal)
        revoked = await self._store.revoke_key(key_id, self._clock())
        self._access.revoked(key_id)
        self._touch(key_id)
        if revoked:
            # A revoked key's receivers would otherwise go on being pushed messages.
            await self._broker.disconnect_key(key_id)
        return revoked
