"""GET /metrics through the real server: the Prometheus text parses, and the numbers
move as messages flow to a healthy and a failing receiver."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import ReceiverFactory, ServerFactory
from tests.support.client import SeedClient
from tests.support.metrics import Scrape

ADMIN_ENV = {"MQPY_ADMIN_KEY": "test-admin-key-metrics-4f2a"}
DEFAULT = "default"


async def scrape(http: aiohttp.ClientSession, base_url: str) -> Scrape:
    async with http.get(base_url + "/metrics") as response:
        assert response.status == 200, await response.text()
        assert response.content_type == "text/plain"
        return Scrape(await response.text())


async def scrape_until(
    http: aiohttp.ClientSession,
    base_url: str,
    condition: Callable[[Scrape], bool],
    timeout: float = 20.0,
) -> Scrape:
    """Scrape until `condition` holds (store figures are read at most once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        scraped = await scrape(http, base_url)
        if condition(scraped):
            return scraped
        assert time.monotonic() < deadline, f"the metrics never got there:\n{scraped.text}"
        await asyncio.sleep(0.1)


async def fail_500(request: web.Request, number: int) -> web.StreamResponse:
    return web.Response(status=500)


async def refuse_400(request: web.Request, number: int) -> web.StreamResponse:
    return web.Response(status=400)


# A group's /metrics has no process_* figures (docs/operations.md, groups).
@pytest.mark.one_process
async def test_numbers_move_as_messages_flow(
    start_server: ServerFactory, start_receiver: ReceiverFactory, http: aiohttp.ClientSession
) -> None:
    # Default retry settings: the failing receiver keeps its deliveries for minutes.
    server = start_server()
    client = SeedClient(http, server.url)
    healthy = await start_receiver()
    failing = await start_receiver(fail_500)
    await client.connect_receiver(healthy.url)
    failing_id = await client.connect_receiver(failing.url)
    sender = await client.connect_sender()
    before = await scrape(http, server.url)
    assert before("mqpy_receivers", state="healthy") == 2

    for n in range(5):
        await client.send(sender, f"message {n}")
    await healthy.wait_for(5)
    await failing.wait_for_attempts(1)

    def settled(m: Scrape) -> bool:
        return (
            m("mqpy_deliveries_total", outcome="delivered") == 5
            and m("mqpy_deliveries_total", outcome="retried") > 0
            and m("mqpy_backlog_messages", topic=DEFAULT) == 5
        )

    after = await scrape_until(http, server.url, settled)
    published = after("mqpy_messages_published_total", topic=DEFAULT)
    assert published - before("mqpy_messages_published_total", topic=DEFAULT) == 5
    assert after("mqpy_deliveries_total", outcome="dead_lettered") == 0
    assert after("mqpy_receivers", state="healthy") == 1
    assert after("mqpy_receivers", state="failing") == 1
    assert after("mqpy_receivers", state="retrying") == 0
    # The healthy receiver took all five; every one still waits for the failing one.
    assert after("mqpy_oldest_undelivered_age_seconds", topic=DEFAULT) > 0
    assert after("mqpy_dead_letters") == 0
    attempts = after("mqpy_delivery_attempts_total")
    assert attempts >= 6
    assert after("mqpy_delivery_duration_seconds_count") == attempts
    assert after("mqpy_delivery_latency_seconds_count") == 5
    assert after("mqpy_delivery_latency_seconds_sum") > 0
    assert after("mqpy_store_batch_size_count") > 0
    assert after("mqpy_store_batch_size_sum") >= after("mqpy_store_batch_size_count")
    assert after("mqpy_store_commit_seconds_count") == after("mqpy_store_batch_size_count")
    assert after("mqpy_deliveries_in_flight") >= 0
    if sys.platform == "linux":  # the process collector reads /proc
        assert after("process_resident_memory_bytes") > 0

    # Once the failing receiver leaves, its deliveries go and the backlog empties.
    await client.disconnect(failing_id)
    drained = await scrape_until(
        http, server.url, lambda m: m("mqpy_backlog_messages", topic=DEFAULT) == 0
    )
    assert drained("mqpy_oldest_undelivered_age_seconds", topic=DEFAULT) == 0
    assert drained("mqpy_receivers", state="failing") == 0
    assert drained("mqpy_receivers", state="healthy") == 1


async def test_dead_letters_are_counted(
    start_server: ServerFactory, start_receiver: ReceiverFactory, http: aiohttp.ClientSession
) -> None:
    server = start_server("--retry-base", "0.05", "--retry-max", "0.2", "--max-attempts", "2")
    client = SeedClient(http, server.url)
    refusing = await start_receiver(refuse_400)
    await client.connect_receiver(refusing.url)
    sender = await client.connect_sender()
    for n in range(3):
        await client.send(sender, f"message {n}")

    # The dead letters are read from the store; the counters of a group's other process
    # reach the scrape up to 0.1 s later (metric_batches.FLUSH_SECONDS): wait for both.
    after = await scrape_until(
        http,
        server.url,
        lambda m: m("mqpy_dead_letters") == 3 and m("mqpy_delivery_attempts_total") >= 6,
    )
    # Attempt 1 of each failed and was retried; attempt 2 was the last.
    assert after("mqpy_deliveries_total", outcome="retried") == 3
    assert after("mqpy_deliveries_total", outcome="dead_lettered") == 3
    assert after("mqpy_deliveries_total", outcome="delivered") == 0
    assert after("mqpy_delivery_attempts_total") == 6
    assert after("mqpy_backlog_messages", topic=DEFAULT) == 0
    # A 400 is this message's problem, not the receiver's: retrying, not paused.
    assert after("mqpy_receivers", state="retrying") == 1
    assert after("mqpy_receivers", state="failing") == 0
    assert len(refusing.attempts) == 6


# A group's /metrics has no process_* figures (docs/operations.md, groups).
@pytest.mark.one_process
async def test_metrics_are_public_and_speak_openmetrics_when_asked(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = start_server(env=ADMIN_ENV)
    for path in ("/metrics", "/metrics/"):
        async with http.get(server.url + path) as response:
            assert response.status == 200, path
            assert "mqpy_deliveries_total" in await response.text()
    accept = {"Accept": "application/openmetrics-text; version=1.0.0"}
    async with http.get(server.url + "/metrics", headers=accept) as response:
        assert response.status == 200
        assert response.content_type == "application/openmetrics-text"
        assert (await response.text()).endswith("# EOF\n")


async def test_a_delayed_message_is_not_counted_late_for_its_delay(
    start_server: ServerFactory, start_receiver: ReceiverFactory, http: aiohttp.ClientSession
) -> None:
    server = start_server()
    receiver = await start_receiver()
    async with http.post(
        server.url + "/v1/subscriptions", json={"url": receiver.url, "topic": "later"}
    ) as response:
        assert response.status == 201, await response.text()
    async with http.post(
        server.url + "/v1/topics/later/messages", json={"body": "in a while", "delay_seconds": 1.5}
    ) as response:
        assert response.status == 201, await response.text()
    await receiver.wait_for(1)

    def observed(m: Scrape) -> bool:
        return m("mqpy_delivery_latency_seconds_count") == 1

    scraped = await scrape_until(http, server.url, observed)
    # Latency runs from when the message was due, not from its publish 1.5 s earlier.
    assert scraped("mqpy_delivery_latency_seconds_sum") < 1.0, scraped.text
