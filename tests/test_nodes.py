"""Several broker nodes on one PostgreSQL database, end to end: real `mqpy serve`
processes, each on its own port, real receivers, a real database.

Every node claims from the same tables, so what matters is what a user sees across
them: each receiver gets every message whichever node it connected through and
whichever node took the publish; a group shares its messages whichever node each
member connected through; a node killed mid-stream hands its work on once its
leases run out; a database restart costs 503s meanwhile and nothing acknowledged.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from tests.conftest import ReceiverFactory, ServerFactory
from tests.support.client import SeedClient
from tests.support.postgres import PostgresCluster
from tests.support.receiver import Receiver
from tests.support.server import ServerProcess

# Slow (`make check` skips it; `make test` runs it): several nodes per test on PostgreSQL.
pytestmark = pytest.mark.slow

FAST_RETRIES = ("--retry-base", "0.05", "--retry-max", "0.5")


def start_nodes(
    start_server: ServerFactory, url: str, count: int, *args: str
) -> list[ServerProcess]:
    return [start_server("--store", url, *FAST_RETRIES, *args) for _ in range(count)]


async def publish_through(
    client: SeedClient, bodies: list[str], *, parallel: int = 16
) -> list[str]:
    """Send `bodies` from a sender of this node, `parallel` at a time; the bodies of
    those answered 200 (any other answer is left out, not retried)."""
    sender = await client.connect_sender()
    accepted: list[str] = []
    queue = list(reversed(bodies))

    async def worker() -> None:
        while queue:
            body = queue.pop()
            status, _ = await client.post("/send", {"id": sender, "body": body})
            if status == 200:
                accepted.append(body)

    await asyncio.gather(*(worker() for _ in range(parallel)))
    return accepted


def texts(receiver: Receiver) -> Counter[str]:
    return Counter(str(r.text) for r in receiver.received)


async def test_receivers_and_a_group_across_three_nodes_get_every_message(
    start_server: ServerFactory, start_receiver: ReceiverFactory, postgres_url: str
) -> None:
    nodes = start_nodes(start_server, postgres_url, 3)
    plain = [await start_receiver() for _ in nodes]
    members = [await start_receiver() for _ in nodes]
    async with aiohttp.ClientSession() as http:
        clients = [SeedClient(http, node.url) for node in nodes]
        for client, receiver, member in zip(clients, plain, members, strict=True):
            await client.connect_receiver(receiver.url)
            data = await client._ok(
                "/connect", {"ClientURL": member.url, "mode": "receive", "group": "g"}
            )
            assert data["id"]
        runs = [[f"n{n}-m{i:04d}" for i in range(1000)] for n in range(3)]
        accepted = await asyncio.gather(
            *(publish_through(c, run) for c, run in zip(clients, runs, strict=True))
        )
    everything = Counter(body for run in accepted for body in run)
    assert sum(everything.values()) == 3000
    for receiver in plain:
        await receiver.wait_for(3000, timeout=90)
    await asyncio.sleep(0.5)  # anything sent twice would arrive by now
    for receiver in plain:
        assert texts(receiver) == everything
    group = sum((texts(member) for member in members), Counter())
    assert group == everything  # each message to one member, once
    assert all(member.received for member in members), [len(m.received) for m in members]


async def test_a_node_killed_mid_stream_hands_its_work_on_when_its_leases_run_out(
    start_server: ServerFactory, start_receiver: ReceiverFactory, postgres_url: str
) -> None:
    async def steady(request: web.Request, number: int) -> web.StreamResponse:
        await asyncio.sleep(0.02)
        return web.Response(status=204)

    lease = 8.0
    nodes = start_nodes(
        start_server, postgres_url, 2, "--workers", "16",
        "--delivery-timeout", "2s", "--lease-seconds", f"{lease}s",
    )  # fmt: skip
    receiver = await start_receiver(steady)
    async with aiohttp.ClientSession() as http:
        survivor, doomed = (SeedClient(http, node.url) for node in nodes)
        await survivor.connect_receiver(receiver.url)
        bodies = [f"m{i:04d}" for i in range(1500)]
        accepted = await publish_through(survivor, bodies[:750]) + await publish_through(
            doomed, bodies[750:]
        )
        assert len(accepted) == 1500
        await receiver.wait_for(200, timeout=30)
        nodes[1].kill()
        killed_at = time.monotonic()
        # What the dead node held can only come again: count its leases as it left them.
        held = await leased_by_pid(postgres_url, nodes[1].pid)
        # Every message, counted once: a duplicate (the dead node's last sends) must
        # not stand in for a message still under its lease.
        await receiver.wait_until(lambda: len(texts(receiver)) >= 1500, timeout=lease + 30)
        took = time.monotonic() - killed_at
    counts = texts(receiver)
    assert set(counts) == set(accepted)  # nothing acknowledged is lost
    duplicates = sum(counts.values()) - len(counts)
    print(f"killed node held {held} leases; {duplicates} duplicates; all in {took:.1f} s")
    assert duplicates <= held, (duplicates, held)
    assert took <= lease + 5, took


async def leased_by_pid(url: str, pid: int) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM deliveries WHERE state = 'pending' "
                "AND lease IS NOT NULL AND split_part(leased_by, ':', 2) = $1",
                str(pid),
            )
        )
    finally:
        await conn.close()


async def test_a_database_restart_costs_503s_meanwhile_and_nothing_acknowledged(
    start_server: ServerFactory,
    start_receiver: ReceiverFactory,
    postgres_url: str,
    postgres_cluster: PostgresCluster,
) -> None:
    nodes = start_nodes(start_server, postgres_url, 2)
    receiver = await start_receiver()
    answers: Counter[int] = Counter()
    problems: set[str] = set()
    accepted: list[str] = []
    async with aiohttp.ClientSession() as http:
        clients = [SeedClient(http, node.url) for node in nodes]
        await clients[0].connect_receiver(receiver.url)
        senders = [await client.connect_sender() for client in clients]
        stop = asyncio.Event()

        async def publisher(index: int) -> None:
            client, sender = clients[index % 2], senders[index % 2]
            number = 0
            while not stop.is_set():
                body = f"p{index}-{number}"
                number += 1
                status, data = await client.post("/send", {"id": sender, "body": body})
                answers[status] += 1
                if status == 200:
                    accepted.append(body)
                else:
                    problems.add(str(data.get("type", "")))
                    await asyncio.sleep(0.05)

        publishers = [asyncio.create_task(publisher(n)) for n in range(4)]
        await asyncio.sleep(1.0)
        await asyncio.to_thread(postgres_cluster.stop)
        await asyncio.sleep(1.5)
        await asyncio.to_thread(postgres_cluster.start)
        await asyncio.sleep(3.0)  # the nodes reconnect by themselves
        stop.set()
        await asyncio.gather(*publishers)
        recovered = await clients[1].post("/send", {"id": senders[1], "body": "after"})
        assert recovered[0] == 200, recovered
        accepted.append("after")
    assert answers[503] > 0, answers  # the outage was seen, as a 503
    assert any("store-unavailable" in p for p in problems), problems
    assert set(answers) <= {200, 503}, answers
    # Duplicates count towards wait_for's number, so wait for every accepted body.
    await receiver.wait_until(lambda: set(texts(receiver)) >= set(accepted), timeout=60)
    assert set(texts(receiver)) >= set(accepted), set(accepted) - set(texts(receiver))
