"""SIGTERM and SIGINT: the first asks for a graceful stop (deliveries in flight may
finish, within --shutdown-grace), a second one for an immediate stop.

Stopping at once loses nothing: what is still in flight is given back to the store,
counted as an attempt, and delivered again after the restart (at-least-once)."""

from __future__ import annotations

import asyncio
import logging
import signal

log = logging.getLogger("mqpy.server")

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """What the process was asked: `requested` on the first signal, `forced` on the next."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.forced = asyncio.Event()

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in SIGNALS:
            loop.add_signal_handler(sig, self._received, sig)

    def _received(self, sig: signal.Signals) -> None:
        if not self.requested.is_set():
            self.requested.set()
        elif not self.forced.is_set():
            log.warning(
                "%s again: stopping now; deliveries still in flight are given back and "
                "will be delivered again after the restart",
                sig.name,
            )
            self.forced.set()
