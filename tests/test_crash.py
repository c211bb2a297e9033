"""Crash recovery: a broker killed with SIGKILL loses no acknowledged message.

Delivery is at-least-once, so duplicates after a crash are allowed (and counted in the
failure message); a missing message is the failure.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import ReceiverFactory, ServerFactory
from tests.support.client import SeedClient
from tests.support.full_disk import fill, free, tiny_tmpfs
from tests.support.load import (
    FAST_RETRIES,
    duplicates,
    publish_many,
    received_ids,
    unused_port,
    wait_for_ids,
    wait_until,
)
from tests.support.receiver import Receiver
from tests.support.server import ServerProcess

# Slow (`make check` skips it; `make test` runs it): kills and restarts servers, fills a disk.
pytestmark = pytest.mark.slow


async def _crash_and_restart(server: ServerProcess) -> None:
    """SIGKILL, then start again on the same port and data directory."""
    server.kill()
    assert not server.running
    # In a thread: receivers share this event loop and must answer meanwhile.
    await asyncio.to_thread(server.restart)


async def test_messages_accepted_while_the_receiver_is_down_survive_kill_9(
    start_server: ServerFactory, http: aiohttp.ClientSession, start_receiver: ReceiverFactory
) -> None:
    server = start_server(*FAST_RETRIES)
    client = SeedClient(http, server.url)
    port = unused_port()  # the receiver is connected before anything listens there
    await client.connect_receiver(f"http://127.0.0.1:{port}/hook")
    sender = await client.connect_sender()
    ids = await publish_many(client, sender, [f"crash {n}" for n in range(1000)])
    assert len(set(ids)) == 1000

    await _crash_and_restart(server)
    receiver = await start_receiver(port=port)
    counts = await wait_for_ids(receiver, ids, timeout=60)
    assert counts.keys() == set(ids), (
        f"{len(set(ids) - counts.keys())} missing, {duplicates(counts)} duplicates"
    )
    body_of = {message_id: f"crash {n}" for n, message_id in enumerate(ids)}
    assert all(record.text == body_of[record.message_id] for record in receiver.received)


async def test_kill_9_during_active_delivery_loses_nothing(
    start_server: ServerFactory, http: aiohttp.ClientSession, start_receiver: ReceiverFactory
) -> None:
    # Four deliveries at a time, 20 ms each: at most 200 a second, so the kill below
    # lands while hundreds are still to go.
    server = start_server("--workers", "8", "--receiver-concurrency", "4", *FAST_RETRIES)
    client = SeedClient(http, server.url)

    async def steady(request: web.Request, number: int) -> web.StreamResponse:
        await asyncio.sleep(0.02)
        return web.Response(status=204)

    receiver: Receiver = await start_receiver(steady)
    await client.connect_receiver(receiver.url)
    sender = await client.connect_sender()
    ids = await publish_many(client, sender, [f"flowing {n}" for n in range(500)])
    await wait_until(lambda: len(receiver.received) >= 100, 30, "100 deliveries")

    before_kill = len(received_ids(receiver))
    await _crash_and_restart(server)
    counts = await wait_for_ids(receiver, ids, timeout=60)
    assert before_kill < 500, "every message arrived before the kill; nothing was tested"
    assert counts.keys() == set(ids), (
        f"{len(set(ids) - counts.keys())} missing, {duplicates(counts)} duplicates"
    )


async def test_a_crash_on_a_full_disk_restarts_and_refuses_publishes(
    start_server: ServerFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    # Start-up gives a dead process's claims back, which is a write: on a full disk it
    # failed, the broker exited, and a supervisor restarted it for ever.
    with tiny_tmpfs(tmp_path / "disk") as disk, socket.socket() as silent:
        # Takes connections (the kernel's backlog) and never answers: deliveries stay
        # claimed until the crash.
        silent.bind(("127.0.0.1", 0))
        silent.listen(100)
        server = start_server("--delivery-timeout", "20s", data_dir=disk / "data")
        client = SeedClient(http, server.url)
        await client.connect_receiver(f"http://127.0.0.1:{silent.getsockname()[1]}/hook")
        sender = await client.connect_sender()
        for number in range(20):
            await client.send(sender, f"claimed {number}")
        await asyncio.sleep(0.5)  # claimed and sent by now
        fill(disk)
        server.kill()
        await asyncio.to_thread(server.restart)
        assert server.running
        # A group's supervisor releases the claims on a connection of its own, and
        # closing it checkpoints the WAL and cuts it back: that gives room back (630 KB
        # of this disk, measured), where one process keeps its connection and the disk
        # stays full. Take the room again so that both check a full disk.
        fill(disk)
        releases = [line for line in server.lines if "starting anyway" in line]
        assert len(releases) == 1, server.log
        async with http.post(server.url + "/send", json={"id": sender, "body": "no room"}) as r:
            assert r.status == 503, await r.text()
            assert (await r.json())["type"].endswith("store-unavailable")
        async with http.get(server.url + "/readyz") as response:
            assert response.status == 503
        free(disk)
        await client.send(sender, "room again")
        server.kill()
