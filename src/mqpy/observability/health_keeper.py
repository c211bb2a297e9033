"""Receivers' health across restarts: taken up from the store at start, saved every few
seconds (only the receivers whose attempts ended meanwhile) and once more at shutdown.

Not per attempt: the hot path only marks a receiver changed in memory. A crash loses at
most the last few seconds of health, which the next attempts rebuild anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from mqpy.model.errors import StoreError
from mqpy.observability.observer import Observer
from mqpy.store import Store

log = logging.getLogger("mqpy.observability")

SAVE_SECONDS = 5.0


class HealthKeeper:
    """Restores the observer's receiver health from the store, and saves it back."""

    def __init__(self, store: Store, observer: Observer, *, interval: float = SAVE_SECONDS):
        self._store = store
        self._observer = observer
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Take up the saved health (before deliveries start), then save periodically."""
        try:
            self._observer.restore_health(await self._store.receiver_health())
        except StoreError as exc:
            log.warning("receivers' health from before the restart is unknown: %s", exc)
        self._task = asyncio.create_task(self._run(), name="mqpy-health-keeper")

    async def stop(self) -> None:
        """Stop saving periodically, and save what changed since the last save."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.save()

    async def save(self) -> None:
        """Save the health that changed; never raises (it is tried again next time)."""
        changed = self._observer.changed_health()
        if not changed:
            return
        try:
            await self._store.save_receiver_health(changed)
        except StoreError as exc:
            log.warning("cannot save %d receivers' health: %s", len(changed), exc)
            self._observer.health_unsaved(changed)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.save()
