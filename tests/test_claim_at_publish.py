"""A publish's deliveries are claimed in the publish's own transaction (SQLite).

While the dispatcher has room and nothing to do, it leaves a claim with the store; the
next publish runs it before committing, so a message at a modest rate costs two
transactions (its publish, its acknowledgement) instead of three (and in a group four:
every process used to claim, all but one for nothing)."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.conftest import ReceiverFactory, ServerFactory
from tests.support.client import SeedClient
from tests.support.metrics import Scrape

MESSAGES = 40


async def scrape(http: aiohttp.ClientSession, base_url: str) -> Scrape:
    async with http.get(base_url + "/metrics") as response:
        assert response.status == 200, await response.text()
        return Scrape(await response.text())


async def delivered(http: aiohttp.ClientSession, base_url: str, count: int) -> Scrape:
    """The metrics once `count` acknowledgements are committed."""
    for _ in range(200):
        scraped = await scrape(http, base_url)
        if scraped("mqpy_deliveries_total", outcome="delivered") >= count:
            return scraped
        await asyncio.sleep(0.05)
    raise AssertionError(f"{count} deliveries were never acknowledged:\n{scraped.text}")


async def test_a_message_at_a_quiet_moment_costs_its_publish_and_its_ack_only(
    start_server: ServerFactory, start_receiver: ReceiverFactory, http: aiohttp.ClientSession
) -> None:
    server = start_server()
    client = SeedClient(http, server.url)
    receiver = await start_receiver()
    await client.connect_receiver(receiver.url)
    sender = await client.connect_sender()
    await client.send(sender, "warm-up")
    await receiver.wait_for(1)
    before = await delivered(http, server.url, 1)

    for n in range(MESSAGES):
        await client.send(sender, f"message {n}")
        await receiver.wait_for(n + 2)  # each alone: nothing shares a transaction
    after = await delivered(http, server.url, MESSAGES + 1)

    assert [r.text for r in receiver.received[1:]] == [f"message {n}" for n in range(MESSAGES)]
    commits = after("mqpy_store_commit_seconds_count") - before("mqpy_store_commit_seconds_count")
    # Two a message, and a few the broker makes on its own (heartbeats, checks, a
    # look at deliveries out); a claim of its own per message made it 2.9 (4.7 in a
    # group of two processes, where each process claimed).
    assert commits <= 2.5 * MESSAGES, commits
