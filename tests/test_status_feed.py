"""GET /v1/status through the real server: the feed the dashboard and `mqpy status`
read shows each receiver's state, the topics and the broker's throughput."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import ReceiverFactory, ServerFactory
from tests.support.client import SeedClient
from tests.support.problems import check_problem

ADMIN_KEY = "test-admin-key-status-3e8b"


async def fail_500(request: web.Request, number: int) -> web.StreamResponse:
    return web.Response(status=500)


async def refuse_400(request: web.Request, number: int) -> web.StreamResponse:
    return web.Response(status=400)


async def read_status(
    http: aiohttp.ClientSession, base_url: str, key: str | None = None
) -> tuple[int, str, bytes]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with http.get(base_url + "/v1/status", headers=headers) as response:
        return response.status, response.content_type, await response.read()


async def status_until(
    http: aiohttp.ClientSession,
    base_url: str,
    condition: Callable[[dict[str, Any]], bool],
    timeout: float = 20.0,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        async with http.get(base_url + "/v1/status") as response:
            assert response.status == 200, await response.text()
            assert response.content_type == "application/json"
            feed: dict[str, Any] = await response.json()
        if condition(feed):
            return feed
        assert time.monotonic() < deadline, f"the status never got there: {feed}"
        await asyncio.sleep(0.1)


def by_id(feed: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {receiver["id"]: receiver for receiver in feed["receivers"]}


# In a group receivers[] (last_success_at) is what the answering process's own attempts
# saw (docs/operations.md, "What stays per node in a group").
@pytest.mark.one_process
async def test_status_shows_receivers_topics_and_throughput(
    start_server: ServerFactory, start_receiver: ReceiverFactory, http: aiohttp.ClientSession
) -> None:
    server = start_server()
    client = SeedClient(http, server.url)
    healthy, failing, refusing = (
        await start_receiver(),
        await start_receiver(fail_500),
        await start_receiver(refuse_400),
    )
    healthy_id = await client.connect_receiver(healthy.url)
    failing_id = await client.connect_receiver(failing.url)
    refusing_id = await client.connect_receiver(refusing.url)
    sender = await client.connect_sender()
    first = await status_until(http, server.url, lambda feed: True)
    assert {r["state"] for r in first["receivers"]} == {"healthy"}
    assert all(r["last_success_at"] is None for r in first["receivers"])

    sent = [(await client.send(sender, f"message {n}"))["message_id"] for n in range(5)]
    await healthy.wait_for(5)

    def settled(feed: dict[str, Any]) -> bool:
        states = {r["id"]: r["state"] for r in feed["receivers"]}
        return (
            states == {healthy_id: "healthy", failing_id: "failing", refusing_id: "retrying"}
            and feed["completed_sends"] == 5
            and feed["topics"][0]["backlog"] == 5
        )

    feed = await status_until(http, server.url, settled)
    assert (feed["readers"], feed["writers"], feed["dead_letters"]) == (3, 1, 0)
    assert feed["queue_length"] == 10  # five each for the two receivers not taking them
    receivers = by_id(feed)

    ok = receivers[healthy_id]
    assert (ok["url"], ok["topic"]) == (healthy.url, "default")
    assert ok["consecutive_failures"] == 0 and ok["recent_failures"] == []
    assert abs(ok["last_success_at"] - feed["at"]) < 30

    for receiver_id, status in ((failing_id, 500), (refusing_id, 400)):
        receiver = receivers[receiver_id]
        assert receiver["last_success_at"] is None
        assert receiver["consecutive_failures"] >= 1
        failures = receiver["recent_failures"]
        assert 1 <= len(failures) <= 10
        assert len(failures) == min(10, receiver["consecutive_failures"])
        for failure in failures:
            assert failure["message_id"] in sent
            assert failure["attempt"] >= 1
            assert failure["status"] == status
            assert failure["reason"] == f"receiver answered HTTP {status}"
        times = [failure["at"] for failure in failures]
        assert times == sorted(times, reverse=True), "newest first"
    assert all(r["in_flight"] >= 0 for r in feed["receivers"])

    (topic,) = feed["topics"]
    assert (topic["topic"], topic["receivers"], topic["backlog"]) == ("default", 3, 5)
    assert topic["oldest_undelivered_age_seconds"] > 0
    assert topic["publish_rate"] == round(5 / 60, 3)
    assert topic["delivery_rate"] == round(5 / 60, 3)

    throughput = feed["throughput"]
    assert len(throughput) == 600
    seconds = [point["at"] for point in throughput]
    assert seconds == list(range(seconds[0], seconds[0] + 600))
    assert seconds[-1] == int(feed["at"])
    assert sum(point["published"] for point in throughput) == 5
    assert sum(point["delivered"] for point in throughput) == 5
    # Each receiver failed at least once; an attempt it saw may still await its answer.
    failed = sum(point["failed"] for point in throughput)
    assert 2 <= failed <= len(failing.attempts) + len(refusing.attempts)


async def test_status_is_for_admins_once_keys_are_configured(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = start_server(env={"MQPY_ADMIN_KEY": ADMIN_KEY})
    check_problem(*await read_status(http, server.url), 401)
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with http.post(
        server.url + "/v1/keys", json={"role": "publisher"}, headers=headers
    ) as response:
        assert response.status == 201
        publisher = (await response.json())["key"]
    problem = check_problem(*await read_status(http, server.url, publisher), 403)
    assert "admin" in problem["detail"]
    status, content_type, body = await read_status(http, server.url, ADMIN_KEY)
    assert (status, content_type) == (200, "application/json"), body


async def test_a_pattern_receiver_counts_towards_the_topics_it_matches(
    start_server: ServerFactory, start_receiver: ReceiverFactory, http: aiohttp.ClientSession
) -> None:
    server = start_server()
    receiver = await start_receiver()
    async with http.post(
        server.url + "/connect",
        json={"ClientURL": receiver.url, "mode": "receive", "topic": "orders.*"},
    ) as response:
        assert response.status == 200, await response.text()
    async with http.post(
        server.url + "/v1/topics/orders.eu/messages", json={"body": "one order"}
    ) as response:
        assert response.status == 201, await response.text()
    await receiver.wait_for(1)

    def shows_orders_eu(feed: dict[str, Any]) -> bool:
        return any(topic["topic"] == "orders.eu" for topic in feed["topics"])

    feed = await status_until(http, server.url, shows_orders_eu)
    topics = {topic["topic"]: topic for topic in feed["topics"]}
    assert "orders.*" not in topics, "a pattern is not a topic"
    assert topics["orders.eu"]["receivers"] == 1
    (shown,) = feed["receivers"]
    assert shown["topic"] == "orders.*", "the receiver itself shows what it subscribed to"


async def post_ok(http: aiohttp.ClientSession, url: str, body: dict[str, Any] | None) -> Any:
    async with http.post(url, json=body) as response:
        assert response.status in (200, 201), await response.text()
        return await response.json()


async def receivers_gauge(http: aiohttp.ClientSession, base_url: str, state: str) -> float:
    async with http.get(base_url + "/metrics") as response:
        assert response.status == 200
        text = await response.text()
    (value,) = re.findall(rf'^mqpy_receivers{{state="{state}"}} (\S+)$', text, re.MULTILINE)
    return float(value)


# In a group receivers[] state is what the answering process's own attempts saw
# (docs/operations.md, "What stays per node in a group").
@pytest.mark.one_process
async def test_status_shows_each_receiver_s_kind_group_and_pause(
    start_server: ServerFactory, start_receiver: ReceiverFactory, http: aiohttp.ClientSession
) -> None:
    server = start_server()
    steady, flaky, watcher = (
        await start_receiver(),
        await start_receiver(fail_500),
        await start_receiver(),
    )
    subscriptions = server.url + "/v1/subscriptions"
    steady_id = (await post_ok(http, subscriptions, {"url": steady.url, "topic": "orders"}))["id"]
    flaky_id = (
        await post_ok(
            http,
            subscriptions,
            {
                "url": flaky.url,
                "topic": "orders",
                "group": "billing",
                "format": "cloudevents-binary",
            },
        )
    )["id"]
    connected = {"ClientURL": watcher.url, "mode": "receive", "topic": "orders", "group": "audit"}
    watcher_id = (await post_ok(http, server.url + "/connect", connected))["id"]

    first = by_id(await status_until(http, server.url, lambda feed: len(feed["receivers"]) == 3))
    shown = {(r["id"], r["kind"], r["group"], r["state"], r["format"]) for r in first.values()}
    assert shown == {
        (steady_id, "push", None, "healthy", "mq"),
        (flaky_id, "push", "billing", "healthy", "cloudevents-binary"),
        (watcher_id, "seed", "audit", "healthy", "mq"),
    }
    assert (first[steady_id]["url"], first[steady_id]["topic"]) == (steady.url, "orders")
    # What clients read before kinds and groups is all still there, as it was.
    legacy = {"id", "url", "topic", "state", "in_flight", "last_success_at"}
    assert legacy | {"consecutive_failures", "recent_failures"} <= set(first[steady_id])

    paused = await post_ok(http, f"{subscriptions}/{steady_id}/pause", None)
    assert paused["paused"] is True
    await post_ok(http, server.url + "/v1/topics/orders/messages", {"body": "order 1"})
    await watcher.wait_for(1)

    def settled(feed: dict[str, Any]) -> bool:
        states = {r["id"]: r["state"] for r in feed["receivers"]}
        return states == {steady_id: "paused", flaky_id: "failing", watcher_id: "healthy"}

    await status_until(http, server.url, settled)
    assert steady.attempts == [], "a paused subscription was sent a message"

    # Paused says why nothing is delivered; it is not failing, even if it was.
    await post_ok(http, f"{subscriptions}/{flaky_id}/pause", None)
    both = by_id(await status_until(http, server.url, lambda feed: True))
    assert (both[steady_id]["state"], both[flaky_id]["state"]) == ("paused", "paused")
    assert both[flaky_id]["group"] == "billing" and both[flaky_id]["consecutive_failures"] >= 1
    assert await receivers_gauge(http, server.url, "paused") == 2
    assert await receivers_gauge(http, server.url, "failing") == 0

    await post_ok(http, f"{subscriptions}/{steady_id}/resume", None)
    await steady.wait_for(1)

    def steady_delivered(feed: dict[str, Any]) -> bool:
        return by_id(feed)[steady_id]["last_success_at"] is not None

    resumed = by_id(await status_until(http, server.url, steady_delivered))
    assert resumed[steady_id]["state"] == "healthy"
    await post_ok(http, f"{subscriptions}/{flaky_id}/resume", None)
    # Resumed, it is as its attempts left it: still down until one succeeds.
    back = by_id(await status_until(http, server.url, lambda feed: True))
    assert back[flaky_id]["state"] == "failing"
    assert await receivers_gauge(http, server.url, "paused") == 0
