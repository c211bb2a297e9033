"""The live nodes in GET /v1/status and `mqpy status`, through real servers: one on
SQLite lists itself, a group of processes on SQLite lists each of them; two on one
PostgreSQL database each list both, and the survivor stops listing a killed one once
its heartbeats are over ten seconds old."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from mqpy.commands.status import NODE_COLUMNS
from mqpy.observability.figures import LIVE_NODE_SECONDS
from tests.conftest import ServerFactory
from tests.support.server import ServerProcess
from tests.test_cli_status import mqpy_status, succeeded, table
from tests.test_processes import free_port

# Slow (`make check` skips it; `make test` runs it): waits for a node's heartbeat to run out.
pytestmark = pytest.mark.slow

NODE_FIELDS = {
    "name",
    "address",
    "started_at",
    "seen_at",
    "uptime_seconds",
    "seen_age_seconds",
    "held",
    "in_flight",
}


async def status(http: aiohttp.ClientSession, server: ServerProcess) -> dict[str, Any]:
    async with http.get(server.url + "/v1/status") as response:
        assert response.status == 200, await response.text()
        feed: dict[str, Any] = await response.json()
    return feed


async def status_until(
    http: aiohttp.ClientSession,
    server: ServerProcess,
    condition: Callable[[dict[str, Any]], bool],
    timeout: float,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        feed = await status(http, server)
        if condition(feed):
            return feed
        assert time.monotonic() < deadline, f"the status never got there: {feed['nodes']}"
        await asyncio.sleep(0.2)


def names(feed: dict[str, Any]) -> list[str]:
    return [node["name"] for node in feed["nodes"]]


def check_node(node: dict[str, Any], server: ServerProcess) -> None:
    """What a live node's heartbeat says of it, as the feed shows it."""
    assert set(node) == NODE_FIELDS, node
    assert str(server.port) in node["address"], (node, server.url)
    assert node["started_at"] <= node["seen_at"]
    assert 0 <= node["seen_age_seconds"] <= LIVE_NODE_SECONDS
    assert node["uptime_seconds"] >= node["seen_age_seconds"]
    assert node["held"] >= node["in_flight"] >= 0


async def test_on_sqlite_the_one_node_is_the_one_answering(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = start_server()
    feed = await status_until(http, server, lambda feed: bool(feed["nodes"]), timeout=10)
    (node,) = feed["nodes"]
    assert node["name"] == feed["node"]
    assert str(server.pid) in node["name"], "a node's name is host:pid:tag"
    check_node(node, server)
    assert (node["held"], node["in_flight"]) == (0, 0)

    shown = succeeded(await mqpy_status("--url", server.url))
    (row,) = table(shown, NODE_COLUMNS)
    assert row["NODE"] == feed["node"] + " (answered)"
    assert str(server.port) in row["ADDRESS"]
    assert row["LAST SEEN"].endswith(" ago") and (row["HELD"], row["IN FLIGHT"]) == ("0", "0")


async def test_on_postgresql_each_node_lists_both_until_one_dies(
    start_server: ServerFactory, http: aiohttp.ClientSession, postgres_url: str
) -> None:
    first = start_server("--store", postgres_url)
    second = start_server("--store", postgres_url)

    def both_listed(feed: dict[str, Any]) -> bool:
        return len(feed["nodes"]) == 2

    feeds = [await status_until(http, s, both_listed, timeout=10) for s in (first, second)]
    assert feeds[0]["node"] != feeds[1]["node"]
    assert names(feeds[0]) == names(feeds[1]) == sorted([feeds[0]["node"], feeds[1]["node"]])
    for feed in feeds:
        nodes = {node["name"]: node for node in feed["nodes"]}
        check_node(nodes[feeds[0]["node"]], first)
        check_node(nodes[feeds[1]["node"]], second)

    shown = succeeded(await mqpy_status("--url", first.url))
    rows = {row["NODE"]: row for row in table(shown, NODE_COLUMNS)}
    assert set(rows) == {feeds[0]["node"] + " (answered)", feeds[1]["node"]}

    second.kill()
    killed_at = time.monotonic()
    # Gone from the list ten seconds after its last heartbeat, give or take the second
    # a read of the store's figures is kept: 12.5 s at most from the kill.
    gone = await status_until(
        http, first, lambda feed: len(feed["nodes"]) == 1, timeout=LIVE_NODE_SECONDS + 2.5
    )
    dropped_after = time.monotonic() - killed_at
    assert names(gone) == [gone["node"]] == [feeds[0]["node"]]
    # Its last heartbeat was at most 2 s before the kill: dropping it much sooner than
    # ten seconds after would take a node that missed a beat or two for a dead one.
    assert dropped_after >= LIVE_NODE_SECONDS - 3, dropped_after


async def test_a_sqlite_group_lists_each_of_its_processes(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    port = free_port()
    server = start_server("--processes", "2", "--port", str(port))
    feed = await status_until(http, server, lambda feed: len(feed["nodes"]) == 2, timeout=15)
    assert feed["node"] in names(feed)
    pids = {node["name"].split(":")[1] for node in feed["nodes"]}
    assert len(pids) == 2 and str(server.pid) not in pids  # the children, not the supervisor
    for node in feed["nodes"]:
        check_node(node, server)
