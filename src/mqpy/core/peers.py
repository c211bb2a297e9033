"""Keeping this node in step with the other nodes that share its store.

Nodes are peers: what one caches of connections, subscriptions and API keys, another
may change at any time. `CatalogSync` reloads those caches within a second of a
change made anywhere: it polls the store's catalog version (one tiny query) and wakes
at once when the store hears of a change (LISTEN/NOTIFY on PostgreSQL). `Heartbeat`
writes this node into the store's list of nodes every few seconds, with what it holds,
so any node can show which nodes are alive and what each is doing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from mqpy.model.domain import NodeInfo
from mqpy.model.errors import StoreUnavailable
from mqpy.store import Store

log = logging.getLogger("mqpy.peers")

# How often the catalog version is polled: a change made through another node is in
# force here within this (plus a reload) even when its notification is lost.
POLL_SECONDS = 0.25
# The least time between two reloads: a burst of changes (a connect storm) costs a
# reload per rest, not one per change.
REST_SECONDS = 0.05
HEARTBEAT_SECONDS = 2.0

# Reads a cache's contents from the store again; False if it must run again to be
# sure of them (this process changed the cache while the store was read).
Reload = Callable[[], Awaitable[bool]]


class _Failures:
    """Logs the first of a run of failures and the recovery, not every attempt."""

    def __init__(self, doing: str) -> None:
        self._doing = doing
        self._failing = False

    def failed(self, error: Exception) -> None:
        if self._failing:
            return
        self._failing = True
        if isinstance(error, StoreUnavailable):
            log.warning("%s failed: %s; trying again", self._doing, error)
        else:
            log.error("%s failed; trying again", self._doing, exc_info=error)

    def succeeded(self) -> None:
        if self._failing:
            self._failing = False
            log.info("%s works again", self._doing)


class CatalogSync:
    """Runs `reloads` whenever the store's catalog version has moved since they last
    all completed."""

    def __init__(
        self, store: Store, reloads: Sequence[Reload], *, interval: float = POLL_SECONDS
    ) -> None:
        self._store = store
        self._reloads = list(reloads)
        self._interval = interval
        # The version the caches were last completely reloaded at; None: not yet.
        self._version: int | None = None
        self._wake = asyncio.Event()
        self._failures = _Failures("reloading connections, subscriptions and keys")
        self._task: asyncio.Task[None] | None = None

    def poke(self) -> None:
        """Another node changed the catalog: look now, not at the next poll."""
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="mqpy-catalog-sync")

    async def stop(self) -> None:
        await _cancel(self._task)

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            if await self.follow():
                await asyncio.sleep(REST_SECONDS)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()

    async def follow(self) -> bool:
        """Reload if the version moved; whether a reload ran. Never raises: a store
        that cannot answer is asked again at the next poll."""
        try:
            version = await self._store.catalog_version()
            if version == self._version:
                return False
            # The version is read first: whatever changes after it moves it again.
            settled = True
            for reload in self._reloads:
                settled = await reload() and settled
        except Exception as exc:  # noqa: BLE001 - logged; a failed reload must not end the task
            self._failures.failed(exc)
            return False
        self._failures.succeeded()
        if settled:
            self._version = version
        return True


class Holding(Protocol):
    """What a node's heartbeat reports of its deliveries (the dispatcher)."""

    @property
    def held(self) -> int: ...

    @property
    def in_flight(self) -> int: ...


class Heartbeat:
    """Writes this node into the store's node list every `interval` seconds."""

    def __init__(
        self, store: Store, holding: Holding, *, interval: float = HEARTBEAT_SECONDS
    ) -> None:
        self._store = store
        self._holding = holding
        self._interval = interval
        self._started = time.monotonic()
        self._address = ""
        self._failures = _Failures("writing this node's heartbeat")
        self._task: asyncio.Task[None] | None = None

    async def start(self, address: str) -> None:
        """Beat once now, so the node is listed as soon as it serves, then go on."""
        self._address = address
        await self.beat()
        self._task = asyncio.create_task(self._run(), name="mqpy-heartbeat")

    async def stop(self) -> None:
        await _cancel(self._task)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.beat()

    async def beat(self) -> None:
        """Record this node as alive now; never raises."""
        now = self._store.clock()
        node = NodeInfo(
            name=self._store.node,
            # By the store's clock, from how long this process has run: a host clock
            # apart from the database's skews neither its start nor its uptime.
            started_at=now - (time.monotonic() - self._started),
            seen_at=now,
            address=self._address,
            held=self._holding.held,
            in_flight=self._holding.in_flight,
        )
        try:
            await self._store.heartbeat(node)
        except Exception as exc:  # noqa: BLE001 - logged; a missed beat must not end the task
            self._failures.failed(exc)
            return
        self._failures.succeeded()


def node_address(scheme: str, addresses: Sequence[Any]) -> str:
    """The URL of the first address an HTTP site listens on (`runner.addresses`)."""
    if not addresses:
        return ""
    host, port = str(addresses[0][0]), int(addresses[0][1])
    if ":" in host:  # IPv6
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
