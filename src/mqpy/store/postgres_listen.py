"""Wake-ups between nodes: LISTEN on a connection of its own, reconnecting by itself.

A publish or a catalog change NOTIFYs once per transaction; every node that listens
hears it and wakes its dispatcher or reloads its caches. A notification is a hint:
one lost while the connection was down (or never sent, behind PgBouncer in
transaction mode, where LISTEN does not work) only means the node finds the work at
its next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

import asyncpg

log = logging.getLogger("mqpy.store")

RECONNECT_SECONDS = 1.0
STOP_RECHECK_SECONDS = 0.1


class Listener:
    """Calls a callback per channel on each notification, while `run` runs."""

    def __init__(
        self,
        dsn: str,
        connect_options: Mapping[str, Any],
        callbacks: Mapping[str, Callable[[], None]],
    ) -> None:
        self._dsn = dsn
        self._connect_options = dict(connect_options)
        self._callbacks = dict(callbacks)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="mqpy-pg-listen")

    async def stop(self) -> None:
        """Cancel until it has ended: a cancellation that arrives as a query or
        connect finishes can be lost inside asyncpg's own timeouts (asyncio.wait_for
        before Python 3.12), and a single one would leave the store's close waiting
        for a loop that goes on reconnecting."""
        task = self._task
        if task is None:
            return
        self._stopping = True
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=STOP_RECHECK_SECONDS)
        with contextlib.suppress(asyncio.CancelledError):
            task.result()

    async def _run(self) -> None:
        warned = False
        while not self._stopping:
            try:
                conn = await asyncpg.connect(self._dsn, **self._connect_options)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                if not warned:
                    log.warning("cannot LISTEN for wake-ups (%s); polling meanwhile", exc)
                    warned = True
                await asyncio.sleep(RECONNECT_SECONDS)
                continue
            warned = False
            try:
                await self._listen(conn)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("lost the LISTEN connection (%s); polling meanwhile", exc)
            finally:
                with contextlib.suppress(Exception):
                    await conn.close(timeout=1)
            await asyncio.sleep(RECONNECT_SECONDS)

    async def _listen(self, conn: asyncpg.Connection) -> None:
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        for channel, callback in self._callbacks.items():
            await conn.add_listener(channel, _caller(callback))
        # Whatever was notified while this connection was down is found by polling;
        # tell every listener once, so nothing waits for the next poll.
        for callback in self._callbacks.values():
            callback()
        while not lost.is_set() and not self._stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await lost.wait()
            if not lost.is_set() and not self._stopping:
                # A dead peer may not close the socket: ask, so a silent loss is seen.
                await conn.fetchval("SELECT 1", timeout=5.0)


def _caller(callback: Callable[[], None]) -> Callable[..., None]:
    def on_notification(*_args: object) -> None:
        callback()

    return on_notification
