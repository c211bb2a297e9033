"""A real HTTP receiver that records what the broker delivers to it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Received:
    body: dict[str, object]  # the JSON delivered; empty for a body that is not JSON
    headers: dict[str, str]
    raw: bytes = b""
    at: float = field(default_factory=time.monotonic)

    @property
    def message_id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def text(self) -> object:
        return self.body.get("body")


Behaviour = Callable[[web.Request, int], Awaitable[web.StreamResponse]]


async def accept(request: web.Request, number: int) -> web.StreamResponse:
    return web.Response(status=204)


class Crowd:
    """A receiver's behaviour that answers after `delay` seconds with `status`, and
    counts how many deliveries it holds at once: the peak since `reset()` (or ever),
    and how many it answered."""

    def __init__(self, delay: float, status: int = 204) -> None:
        self.delay = delay
        self.status = status
        self.now = 0
        self.peak = 0
        self.answered = 0

    def reset(self) -> None:
        self.peak = self.now

    async def __call__(self, request: web.Request, number: int) -> web.StreamResponse:
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.now -= 1
            self.answered += 1
        return web.Response(status=self.status)


class Receiver:
    """An aiohttp server on 127.0.0.1 with an ephemeral port.

    `behaviour(request, n)` answers the n-th delivery (1-based) and decides the status;
    only deliveries answered with a 2xx count as received.
    """

    def __init__(self, behaviour: Behaviour = accept, path: str = "/hook") -> None:
        self.behaviour = behaviour
        self.path = path
        self.received: list[Received] = []
        self.attempts: list[Received] = []
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    async def start(self, port: int = 0) -> Receiver:
        app = web.Application()
        app.router.add_post(self.path, self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port or self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:  # a CloudEvent in binary mode carries the message as it is
            body = {}
        record = Received(body=body, headers=dict(request.headers), raw=raw)
        self.attempts.append(record)
        async with self._changed:
            self._changed.notify_all()
        response = await self.behaviour(request, len(self.attempts))
        if 200 <= response.status < 300:
            self.received.append(record)
        async with self._changed:
            self._changed.notify_all()
        return response

    async def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        """Wait until `count` deliveries were received; fails the test on timeout."""
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.received) >= count)
        return self.received

    async def wait_until(self, done: Callable[[], bool], timeout: float = 30.0) -> None:
        """Wait until `done()` holds, checked after every delivery; fails on timeout."""
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(done)

    async def wait_for_attempts(self, count: int, timeout: float = 30.0) -> list[Received]:
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.attempts) >= count)
        return self.attempts
