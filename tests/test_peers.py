"""Nodes are peers: a change made through one node is in force on every node sharing
its PostgreSQL store within a second. Real `mqpy serve` processes, each on its own
port, real receivers, a real database; each test changes something through one node
and watches another.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from tests.conftest import ReceiverFactory, ServerFactory
from tests.support.routing import Broker, texts, wait_for_texts
from tests.support.server import ServerProcess

# Slow (`make check` skips it; `make test` runs it): starts two nodes per test on one PostgreSQL.
pytestmark = pytest.mark.slow

ADMIN_KEY = "peers-admin-key-5c0e7d1a93"
ADMIN_ENV = {"MQPY_ADMIN_KEY": ADMIN_KEY}
FAST_RETRIES = ("--retry-base", "0.05", "--retry-max", "0.5")
# What the nodes promise: a change through one is in force on the others within this.
IN_FORCE_SECONDS = 1.0


def start_nodes(
    start_server: ServerFactory, url: str, count: int, *args: str
) -> list[ServerProcess]:
    return [start_server("--store", url, *FAST_RETRIES, *args, env=ADMIN_ENV) for _ in range(count)]


def admins(http: aiohttp.ClientSession, nodes: list[ServerProcess]) -> list[Broker]:
    return [Broker(http, node.url, ADMIN_KEY) for node in nodes]


async def within(
    seconds: float, probe: Callable[[], Awaitable[Any]], accept: Callable[[Any], bool], what: str
) -> float:
    """Await `probe` until `accept` holds for its answer; how long that took. Fails
    once `seconds` have passed without it."""
    started = time.monotonic()
    while True:
        value = await probe()
        took = time.monotonic() - started
        if accept(value):
            return took
        assert took < seconds, f"not within {seconds:g} s: {what}; last answer {value}"
        await asyncio.sleep(0.02)


async def new_key(admin: Broker, role: str) -> dict[str, Any]:
    key: dict[str, Any] = await admin.ok("POST", "/v1/keys", {"role": role}, status=201)
    return key


async def test_a_key_created_through_one_node_works_through_another_within_a_second(
    start_server: ServerFactory, http: aiohttp.ClientSession, postgres_url: str
) -> None:
    a, b = admins(http, start_nodes(start_server, postgres_url, 2))
    key = await new_key(a, "publisher")
    publisher_b = b.as_key(key["key"])

    async def publish_through_b() -> int:
        return (await publisher_b.publish("audit", "hello")).status

    took = await within(IN_FORCE_SECONDS, publish_through_b, lambda s: s == 201, "B takes it")
    print(f"a key created through A worked through B after {took:.3f} s")


async def test_a_key_revoked_through_one_node_is_refused_by_another_within_a_second(
    start_server: ServerFactory, http: aiohttp.ClientSession, postgres_url: str
) -> None:
    (a,) = admins(http, start_nodes(start_server, postgres_url, 1))
    key = await new_key(a, "publisher")
    # B starts knowing the key: only the revocation has to travel.
    (b,) = admins(http, start_nodes(start_server, postgres_url, 1))
    publisher_b = b.as_key(key["key"])

    async def publish_through_b() -> int:
        return (await publisher_b.publish("audit", "hello")).status

    assert await publish_through_b() == 201
    await a.ok("DELETE", f"/v1/keys/{key['id']}", status=204)
    took = await within(
        IN_FORCE_SECONDS, publish_through_b, lambda s: s == 401, "B refuses the revoked key"
    )
    print(f"a key revoked through A was refused by B after {took:.3f} s")
    assert await publish_through_b() == 401


async def test_a_subscription_made_through_one_node_gets_what_another_takes(
    start_server: ServerFactory,
    http: aiohttp.ClientSession,
    start_receiver: ReceiverFactory,
    postgres_url: str,
) -> None:
    """Decided by the store: a publish reads the routes as of its own transaction."""
    a, b = admins(http, start_nodes(start_server, postgres_url, 2))
    receiver = await start_receiver()
    await a.subscribe(receiver.url, "orders.*")
    await b.publish_new("orders.eu", "right after the subscription")
    await wait_for_texts(receiver, ["right after the subscription"], timeout=5)


async def test_a_sender_connected_through_one_node_sends_through_another_at_once(
    start_server: ServerFactory,
    http: aiohttp.ClientSession,
    start_receiver: ReceiverFactory,
    postgres_url: str,
) -> None:
    a, b, c = admins(http, start_nodes(start_server, postgres_url, 3))
    receiver = await start_receiver()
    await c.connect_receiver(receiver.url)
    sender = await a.connect_sender()
    await b.send(sender, "sent through B by a sender of A")
    await wait_for_texts(receiver, ["sent through B by a sender of A"], timeout=5)
    # Disconnected through yet another node, it is gone on all of them.
    await c.ok("POST", "/disconnect", {"id": sender})
    for node in (a, b, c):

        async def send_after(node: Broker = node) -> int:
            return (await node.call("POST", "/send", {"id": sender, "body": "after"})).status

        await within(IN_FORCE_SECONDS, send_after, lambda s: s == 404, f"404 from {node.base_url}")


class Slow:
    """A receiver that takes `seconds` to acknowledge each delivery."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    async def __call__(self, request: web.Request, number: int) -> web.StreamResponse:
        await asyncio.sleep(self.seconds)
        return web.Response(status=204)


async def test_a_receiver_disconnected_through_another_node_gets_nothing_more_from_any(
    start_server: ServerFactory,
    http: aiohttp.ClientSession,
    start_receiver: ReceiverFactory,
    postgres_url: str,
) -> None:
    """One worker per node and room for 20 more deliveries each: a node that went on
    believing in the receiver would go on sending what it already holds for it."""
    nodes = start_nodes(
        start_server, postgres_url, 2, "--workers", "1", "--jobs", "20",
        "--receiver-concurrency", "20",
    )  # fmt: skip
    a, b = admins(http, nodes)
    receiver = await start_receiver(Slow(0.25))
    receiver_id = await a.connect_receiver(receiver.url)
    await b.publish_texts("default", [f"m{n}" for n in range(40)])
    await receiver.wait_for_attempts(2, timeout=5)

    await b.ok("POST", "/disconnect", {"id": receiver_id})
    started = len(receiver.attempts)
    for node in (a, b):
        await node.publish_new("default", f"after the disconnect, through {node.base_url}")
    await asyncio.sleep(2.0)
    late = texts(receiver.attempts[started:])
    print(f"{started} attempts before the disconnect answered, {len(late)} after: {late}")
    # What each node was sending when it heard may finish, and A may start one more
    # before its next poll; nothing else, and nothing published since.
    assert len(late) <= 3, late
    assert not [t for t in late if t.startswith("after the disconnect")], late


async def test_a_subscription_paused_through_one_node_is_not_delivered_by_another(
    start_server: ServerFactory,
    http: aiohttp.ClientSession,
    start_receiver: ReceiverFactory,
    postgres_url: str,
) -> None:
    """Decided by the store: a claim reads which subscriptions are paused as of its own
    transaction, so B claims nothing for it from the moment the pause answered."""
    a, b = admins(http, start_nodes(start_server, postgres_url, 2))
    receiver = await start_receiver()
    subscription = await b.subscribe(receiver.url, "held")
    await b.publish_new("held", "before the pause")
    await wait_for_texts(receiver, ["before the pause"], timeout=5)

    await a.ok("POST", f"/v1/subscriptions/{subscription['id']}/pause")
    await b.publish_new("held", "while paused")
    await asyncio.sleep(1.5)
    assert texts(receiver.attempts) == ["before the pause"]

    await a.ok("POST", f"/v1/subscriptions/{subscription['id']}/resume")
    await wait_for_texts(receiver, ["while paused"], timeout=5)


async def test_a_pace_set_through_one_node_holds_on_another_from_its_first_claim(
    start_server: ServerFactory,
    http: aiohttp.ClientSession,
    start_receiver: ReceiverFactory,
    postgres_url: str,
) -> None:
    """max_per_second is kept per node: each may start one delivery per 5 s here. B
    may hold 16 deliveries of one receiver at once; had it not heard of the pace, its
    first claim would take them all and send them."""
    nodes = start_nodes(
        start_server, postgres_url, 2, "--workers", "16", "--receiver-concurrency", "16"
    )
    a, b = admins(http, nodes)
    receiver = await start_receiver()
    subscription = await a.subscribe(receiver.url, "paced")
    await a.ok("PATCH", f"/v1/subscriptions/{subscription['id']}", {"max_per_second": 0.2})
    await asyncio.sleep(IN_FORCE_SECONDS)
    await b.publish_texts("paced", [f"p{n}" for n in range(12)])
    await asyncio.sleep(2.0)
    # One each: a pace holds up to a second's worth, and at least one delivery.
    assert len(receiver.attempts) <= 2, texts(receiver.attempts)


async def test_max_connections_per_key_counts_the_connections_of_every_node(
    start_server: ServerFactory, http: aiohttp.ClientSession, postgres_url: str
) -> None:
    limit = ("--max-connections-per-key", "2")
    (a,) = admins(http, start_nodes(start_server, postgres_url, 1, *limit))
    key = await new_key(a, "publisher")
    # The others start knowing the key: only the connections have to travel.
    b, c = admins(http, start_nodes(start_server, postgres_url, 2, *limit))
    as_key = [node.as_key(key["key"]) for node in (a, b, c)]

    first = await as_key[0].connect_sender()
    await as_key[1].connect_sender()
    await asyncio.sleep(IN_FORCE_SECONDS)
    for node in as_key:
        refused = await node.call("POST", "/connect", {"ClientURL": "", "mode": "send"})
        refused.problem(403)

    await as_key[2].ok("POST", "/disconnect", {"id": first})
    await asyncio.sleep(IN_FORCE_SECONDS)
    await as_key[1].connect_sender()


async def test_each_node_is_listed_with_its_address_before_it_says_it_listens(
    start_server: ServerFactory, postgres_url: str
) -> None:
    nodes = start_nodes(start_server, postgres_url, 2)
    conn = await asyncpg.connect(postgres_url)
    try:
        listed = await conn.fetch("SELECT name, address, seen_at FROM nodes ORDER BY address")
        assert sorted(row["address"] for row in listed) == sorted(n.url for n in nodes)
        first_seen = {row["name"]: row["seen_at"] for row in listed}
        await asyncio.sleep(2.5)  # a heartbeat every 2 s
        again = await conn.fetch("SELECT name, seen_at FROM nodes")
    finally:
        await conn.close()
    assert {row["name"] for row in again} == set(first_seen)
    for row in again:
        assert row["seen_at"] > first_seen[row["name"]], "no second heartbeat"
