"""Leases on claimed deliveries: renewed while this node holds them, so a delivery
waiting its turn longer than --lease-seconds is not handed out a second time."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import ReceiverFactory, ServerFactory
from tests.support.client import SeedClient

# Slow (`make check` skips it; `make test` runs it): waits for leases to run out and be renewed.
pytestmark = pytest.mark.slow


async def test_deliveries_held_past_their_lease_are_renewed_not_sent_twice(
    start_server: ServerFactory, start_receiver: ReceiverFactory
) -> None:
    async def slow(request: web.Request, number: int) -> web.StreamResponse:
        await asyncio.sleep(1.0)
        return web.Response(status=204)

    # One delivery at a time and nine claimed at once: the last waits about 9 s in
    # memory, past its 7 s lease, which only renewal keeps this node's.
    server = start_server(
        "--workers", "1", "--jobs", "8", "--receiver-concurrency", "9",
        "--delivery-timeout", "2s", "--lease-seconds", "7s",
    )  # fmt: skip
    receiver = await start_receiver(slow)
    async with aiohttp.ClientSession() as session:
        client = SeedClient(session, server.url)
        await client.connect_receiver(receiver.url)
        sender = await client.connect_sender()
        for n in range(9):
            await client.send(sender, f"m{n}")
        await receiver.wait_for(9, timeout=30)
        await asyncio.sleep(2.0)  # time for a second copy to turn up, if one would
    assert sorted(str(r.text) for r in receiver.attempts) == [f"m{n}" for n in range(9)]
