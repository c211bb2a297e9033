"""Waking every long poll at once when deliveries may have become due."""

from __future__ import annotations

import asyncio


class Wakeup:
    """A broadcast: `notify` wakes whoever holds the current `signal`. A waiter takes
    the signal before it looks for work, so a notification that lands while it looks
    is not lost."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def signal(self) -> asyncio.Event:
        return self._event

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()
