"""Group commit for an async store: callers queue work, one flush serves them all.

A caller submits an item and awaits its result. If fewer than `max_concurrent`
flushes are running, one starts at once with whatever is waiting; items that arrive
while they run wait for the next, so under load each transaction (and each fsync,
and each round trip) serves many callers, and when idle nothing waits for a timer.
More than one flush at a time keeps a database that commits transactions side by
side (PostgreSQL) busy while one of them waits for its fsync.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from mqpy.model.domain import ClaimedDelivery

Item = TypeVar("Item")
Result = TypeVar("Result")

# A flush returns for each item, in order, its result or the error for its caller.
Flush = Callable[[Sequence[Item]], Awaitable[Sequence[Result | BaseException]]]


class Batcher(Generic[Item, Result]):
    """Queues items and runs `flush` on batches of at most `max_batch` of them."""

    def __init__(
        self, flush: Flush[Item, Result], *, max_batch: int = 1000, max_concurrent: int = 1
    ) -> None:
        self._flush = flush
        self._max_batch = max_batch
        self._max_concurrent = max_concurrent
        self._waiting: list[tuple[Item, asyncio.Future[Result]]] = []
        self._runners: set[asyncio.Task[None]] = set()
        # Called after each flush with its size and duration (metrics); must not raise.
        self.on_flush: Callable[[int, float], None] | None = None

    async def submit(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        # A runner is done the moment its loop found nothing waiting (no await between
        # the two), so one that is not done yet will still see this item.
        self._runners = {runner for runner in self._runners if not runner.done()}
        if len(self._runners) < self._max_concurrent:
            self._runners.add(asyncio.create_task(self._run(), name="mqpy-batch"))
        return await future

    async def close(self) -> None:
        """Let the running flushes finish (what is queued still gets written)."""
        for runner in list(self._runners):
            with contextlib.suppress(asyncio.CancelledError):
                await runner

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting:
            batch = self._waiting[: self._max_batch]
            del self._waiting[: self._max_batch]
            started = loop.time()
            try:
                outcomes = await self._flush([item for item, _ in batch])
            except BaseException as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
            if self.on_flush is not None:
                self.on_flush(len(batch), loop.time() - started)


@dataclass(frozen=True, slots=True)
class Settlement:
    """How one attempt ended, as both stores batch it: an ack (`due_at` None, `dead`
    False), a retry (`due_at` set) or a dead letter (`dead`). `attempted_at` and
    `duration` (None if unknown) go into the delivery's attempt history."""

    delivery: ClaimedDelivery
    at: float
    status: int | None
    error: str | None = None
    due_at: float | None = None
    dead: bool = False
    attempted_at: float = 0.0
    duration: float | None = None
