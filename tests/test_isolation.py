"""One bad receiver never hurts the others: a receiver that refuses connections or
answers slowly delays only its own deliveries."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import web

from tests.conftest import ReceiverFactory, ServerFactory
from tests.support.client import SeedClient
from tests.support.load import FAST_RETRIES, publish_many, unused_port, wait_for_ids


async def _time_healthy_delivery(
    start_server: ServerFactory,
    http: aiohttp.ClientSession,
    start_receiver: ReceiverFactory,
    *,
    with_refusing_receiver: bool,
) -> float:
    """Seconds from the first publish until a healthy receiver has all 1,000 messages,
    on a fresh broker (next to a receiver that refuses connections, if asked)."""
    server = start_server(*FAST_RETRIES)
    client = SeedClient(http, server.url)
    if with_refusing_receiver:
        await client.connect_receiver(f"http://127.0.0.1:{unused_port()}/hook")
    healthy = await start_receiver()
    await client.connect_receiver(healthy.url)
    sender = await client.connect_sender()
    started = time.monotonic()
    ids = await publish_many(client, sender, [f"isolation {n}" for n in range(1000)])
    await wait_for_ids(healthy, ids, timeout=60)
    elapsed = time.monotonic() - started
    server.kill()  # its retries to the refusing receiver would only compete for the CPU
    return elapsed


async def test_refusing_receiver_does_not_slow_a_healthy_one(
    start_server: ServerFactory, http: aiohttp.ClientSession, start_receiver: ReceiverFactory
) -> None:
    alone = await _time_healthy_delivery(
        start_server, http, start_receiver, with_refusing_receiver=False
    )
    beside_refusing = await _time_healthy_delivery(
        start_server, http, start_receiver, with_refusing_receiver=True
    )
    # Generous on purpose: a slow machine cannot fail this, a broker that waits on
    # the refusing receiver (retry sleeps, a shared queue) would.
    print(f"alone {alone:.2f} s, beside a refusing receiver {beside_refusing:.2f} s")
    assert beside_refusing < 2 * alone + 1, (
        f"1,000 messages took {beside_refusing:.2f} s next to a refusing receiver, "
        f"{alone:.2f} s alone"
    )


async def test_slow_receiver_does_not_hold_up_a_fast_one(
    start_server: ServerFactory, http: aiohttp.ClientSession, start_receiver: ReceiverFactory
) -> None:
    server = start_server("--workers", "4", *FAST_RETRIES)
    client = SeedClient(http, server.url)

    async def three_seconds(request: web.Request, number: int) -> web.StreamResponse:
        await asyncio.sleep(3)
        return web.Response(status=204)

    slow = await start_receiver(three_seconds)
    fast = await start_receiver()
    await client.connect_receiver(slow.url)
    await client.connect_receiver(fast.url)
    sender = await client.connect_sender()
    ids = await publish_many(client, sender, [f"mixed {n}" for n in range(200)])
    await wait_for_ids(fast, ids, timeout=30)
    assert len(slow.received) < 3, (
        f"the fast receiver got its 200 messages only after the slow one answered "
        f"{len(slow.received)} (3 s each)"
    )
    assert slow.attempts, "the slow receiver was never tried; nothing was tested"
