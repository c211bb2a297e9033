"""SIGTERM and SIGINT: the first asks for a graceful stop (deliveries in flight may
finish, within --shutdown-grace), a second one for an immediate stop.

Stopping at once loses nothing: what is still in flight is given back to the store,
counted as an attempt, and delivered again after the restart (at-least-once)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections import Counter

log = logging.getLogger("mqpy.server")

SIGNALS = (signal.SIGTERM, signal.SIGINT)
# A process stops within twice --shutdown-grace (HTTP, then deliveries), plus closing
# its store; this much more, and it is stuck.
STOP_MARGIN_SECONDS = 10.0
# After a second signal, what it still writes (deliveries given back) gets this long.
FORCED_STOP_SECONDS = 5.0
STUCK_EXIT_CODE = 70  # EX_SOFTWARE


def stop_timeout(grace: float) -> float:
    """How long a graceful stop may take before the process counts as stuck."""
    return 2 * grace + STOP_MARGIN_SECONDS


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

    async def exit_if_stuck(self, grace: float) -> None:
        """Exit the process if a stop, once asked for, does not finish in time: by
        `stop_timeout(grace)`, or soon after a second signal. A stop that waits on
        something that never comes would otherwise keep the process, without its
        port, alive for good, and nobody may be left to kill it (a group's
        supervisor that was killed). What it waited on is logged first."""
        await self.requested.wait()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(stop_timeout(grace)):
                await self.forced.wait()
        if self.forced.is_set():
            await asyncio.sleep(FORCED_STOP_SECONDS)
        log.error(
            "the stop did not finish in time; exiting with status %d. Still waiting: %s",
            STUCK_EXIT_CODE,
            "; ".join(_waiting_on()) or "nothing",
        )
        logging.shutdown()
        sys.stderr.flush()
        os._exit(STUCK_EXIT_CODE)


def _waiting_on() -> list[str]:
    """Where the loop's other tasks wait, each place once with how many wait there."""
    current = asyncio.current_task()
    places: Counter[str] = Counter()
    for task in asyncio.all_tasks():
        if task is current:
            continue
        coro = task.get_coro()
        name = getattr(coro, "__qualname__", repr(coro))
        frames = task.get_stack(limit=1)
        where = f"{frames[0].f_code.co_filename}:{frames[0].f_lineno}" if frames else "its start"
        places[f"{name} at {where}"] += 1
    return [place if n == 1 else f"{place} (x{n})" for place, n in places.most_common()]
