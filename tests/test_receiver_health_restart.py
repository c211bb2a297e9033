"""Receivers' health survives a restart: after restarting a real server, `mqpy status`
shows each receiver's real state, last success and last failure, not `healthy` and
`never` for all of them."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from mqpy.commands.status import RECEIVER_COLUMNS
from tests.conftest import ReceiverFactory, ServerFactory
from tests.support.client import SeedClient
from tests.test_cli_status import fail_500, feed_until, mqpy_status, succeeded, table


# In a group receivers[] is what the answering process's own attempts saw
# (docs/operations.md, "What stays per node in a group").
@pytest.mark.one_process
async def test_status_after_a_restart_shows_each_receivers_health(
    start_server: ServerFactory, start_receiver: ReceiverFactory, http: aiohttp.ClientSession
) -> None:
    # Default retries: the failing receiver is paused after its first 500s and probed
    # ever later, so nothing dies and nothing changes while the server restarts.
    server = start_server()
    client = SeedClient(http, server.url)
    healthy, failing = await start_receiver(), await start_receiver(fail_500)
    healthy_id = await client.connect_receiver(healthy.url)
    failing_id = await client.connect_receiver(failing.url)
    sender = await client.connect_sender()
    for n in range(3):
        await client.send(sender, f"message {n}")
    await healthy.wait_for(3)

    def settled(feed: dict[str, Any]) -> bool:
        states = {r["id"]: r["state"] for r in feed["receivers"]}
        return states == {healthy_id: "healthy", failing_id: "failing"}

    before = {r["id"]: r for r in (await feed_until(server.url, settled))["receivers"]}
    assert before[healthy_id]["last_success_at"] is not None

    assert server.terminate() == 0
    server.restart()

    after = {r["id"]: r for r in (await feed_until(server.url, lambda feed: True))["receivers"]}
    assert after[healthy_id]["state"] == "healthy"
    assert after[healthy_id]["last_success_at"] == before[healthy_id]["last_success_at"]
    assert after[failing_id]["state"] == "failing"
    assert after[failing_id]["last_success_at"] is None
    assert after[failing_id]["consecutive_failures"] >= before[failing_id]["consecutive_failures"]
    (last,) = after[failing_id]["recent_failures"][:1]
    assert last["reason"] == "receiver answered HTTP 500" and last["status"] == 500

    shown = succeeded(await mqpy_status(url=server.url))
    receivers = {row["ID"]: row for row in table(shown, RECEIVER_COLUMNS)}
    ok, bad = receivers[str(healthy_id)], receivers[str(failing_id)]
    assert ok["STATE"] == "healthy" and ok["LAST SUCCESS"].endswith(" ago"), ok
    assert (bad["STATE"], bad["LAST SUCCESS"]) == ("failing", "never")
    assert bad["LAST FAILURE"] == "receiver answered HTTP 500"
    assert int(bad["FAILURES"]) >= 1
