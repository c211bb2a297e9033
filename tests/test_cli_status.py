"""`mqpy status`, run as a real process against a real server with real receivers: one
that acknowledges, one that answers 500 and whose URL carries a C1 control character."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from mqpy.commands.status import (
    NODE_COLUMNS,
    RECEIVER_COLUMNS,
    TOPIC_COLUMNS,
    decode_feed,
    format_age,
    format_status,
)
from tests.conftest import ReceiverFactory, ServerFactory
from tests.support.client import SeedClient
from tests.support.launcher import run_mqpy
from tests.support.load import unused_port

ADMIN_KEY = "cli-status-admin-key-51c9"
# U+009B is the one-character CSI: printed raw, a terminal may read what follows as an
# escape sequence. The broker accepts it in a URL, so the command must escape it.
CSI = "\u009b"
_PROXY_VARIABLES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str


async def mqpy_status(*args: str, url: str | None = None, key: str | None = None) -> Run:
    """`mqpy status ARGS` in a child process, without blocking the event loop the test's
    receivers answer on; MQPY_URL and MQPY_KEY from `url` and `key`, no other MQPY_*
    from the developer's shell, and no proxy."""
    environ = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("MQPY_") and name.lower() not in _PROXY_VARIABLES
    }
    env = {name: value for name, value in (("MQPY_URL", url), ("MQPY_KEY", key)) if value}
    result = await asyncio.to_thread(run_mqpy, ["status", *args], {**environ, **env}, None, 60)
    return Run(result.returncode, result.stdout.decode(), result.stderr.decode())


def succeeded(run: Run) -> str:
    assert run.code == 0, run
    assert run.stderr == "", run
    return run.stdout


async def fail_500(request: web.Request, number: int) -> web.StreamResponse:
    return web.Response(status=500)


def table(text: str, columns: tuple[str, ...]) -> list[dict[str, str]]:
    """The rows of the table under the header `columns`, cell by column name: cells are
    two or more spaces apart and never empty."""
    lines = text.splitlines()
    header = "  ".join(columns)
    start = next(i for i, line in enumerate(lines) if re.sub(r"\s{2,}", "  ", line) == header)
    rows = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        cells = re.split(r"\s{2,}", line.strip())
        assert len(cells) == len(columns), (line, text)
        rows.append(dict(zip(columns, cells, strict=True)))
    return rows


async def feed_until(
    url: str, condition: Callable[[dict[str, Any]], bool], timeout: float = 20.0
) -> dict[str, Any]:
    """`mqpy status --json` until its feed meets `condition`."""
    deadline = time.monotonic() + timeout
    while True:
        feed: dict[str, Any] = json.loads(succeeded(await mqpy_status("--json", url=url)))
        if condition(feed):
            return feed
        assert time.monotonic() < deadline, f"the status never got there: {feed}"
        await asyncio.sleep(0.2)


# In a group a topic's rates are up to 1 s late (docs/operations.md, groups).
@pytest.mark.one_process
async def test_status_shows_topics_and_receivers(
    start_server: ServerFactory, start_receiver: ReceiverFactory, http: aiohttp.ClientSession
) -> None:
    # Default retries: the failing receiver is paused at its first 500 and its probes
    # come ever later, so no delivery runs out of attempts while the test reads.
    server = start_server()
    client = SeedClient(http, server.url)
    healthy, failing = await start_receiver(), await start_receiver(fail_500)
    failing_url = failing.url + "#" + CSI + "31m"
    healthy_id = await client.connect_receiver(healthy.url)
    failing_id = await client.connect_receiver(failing_url)

    empty = succeeded(await mqpy_status("--url", server.url))
    assert empty.splitlines()[0] == (
        "readers 2  writers 0  queue length 0  completed sends 0  dead letters 0"
    )
    receivers = {row["ID"]: row for row in table(empty, RECEIVER_COLUMNS)}
    assert receivers[str(healthy_id)]["LAST SUCCESS"] == "never"
    assert receivers[str(healthy_id)]["STATE"] == "healthy"

    sender = await client.connect_sender()
    for n in range(3):
        await client.send(sender, f"message {n}")
    await healthy.wait_for(3)

    def settled(feed: dict[str, Any]) -> bool:
        states = {r["id"]: r["state"] for r in feed["receivers"]}
        backlogs = [topic["backlog"] for topic in feed["topics"]]
        return states == {healthy_id: "healthy", failing_id: "failing"} and backlogs == [3]

    feed = await feed_until(server.url, settled)
    assert feed["completed_sends"] == 3 and len(feed["throughput"]) > 0

    shown = succeeded(await mqpy_status(url=server.url))  # the URL from MQPY_URL
    assert CSI not in shown, "a control character from the server reached the terminal"
    assert shown.splitlines()[0] == (
        "readers 2  writers 1  queue length 3  completed sends 3  dead letters 0"
    )
    (topic,) = table(shown, TOPIC_COLUMNS)
    assert (topic["TOPIC"], topic["BACKLOG"], topic["RECEIVERS"]) == ("default", "3", "2")
    assert re.fullmatch(r"\d+s", topic["OLDEST"]), topic
    assert topic["PUBLISHED/S"] == topic["DELIVERED/S"] == f"{3 / 60:.2f}"

    receivers = {row["ID"]: row for row in table(shown, RECEIVER_COLUMNS)}
    assert set(receivers) == {str(healthy_id), str(failing_id)}
    ok = receivers[str(healthy_id)]
    assert (ok["URL"], ok["TOPIC"], ok["GROUP"], ok["STATE"]) == (
        healthy.url,
        "default",
        "-",
        "healthy",
    )
    assert re.fullmatch(r"\d+s ago", ok["LAST SUCCESS"]), ok
    assert (ok["FAILURES"], ok["LAST FAILURE"], ok["IN FLIGHT"]) == ("0", "-", "0")

    bad = receivers[str(failing_id)]
    assert bad["URL"] == failing.url + "#\\x9b31m"
    assert (bad["STATE"], bad["LAST SUCCESS"]) == ("failing", "never")
    assert int(bad["FAILURES"]) >= 1
    assert bad["LAST FAILURE"] == "receiver answered HTTP 500"


# In a group receivers[] is what the answering process's own attempts saw
# (docs/operations.md, "What stays per node in a group").
@pytest.mark.one_process
async def test_status_shows_each_receiver_s_group_and_a_pause(
    start_server: ServerFactory, start_receiver: ReceiverFactory, http: aiohttp.ClientSession
) -> None:
    server = start_server()
    member, watcher = await start_receiver(), await start_receiver()
    async with http.post(
        server.url + "/v1/subscriptions",
        json={"url": member.url, "topic": "orders.*", "group": "billing"},
    ) as response:
        assert response.status == 201, await response.text()
        member_id = (await response.json())["id"]
    watcher_id = await SeedClient(http, server.url).connect_receiver(watcher.url)
    async with http.post(f"{server.url}/v1/subscriptions/{member_id}/pause") as response:
        assert response.status == 200, await response.text()

    shown = succeeded(await mqpy_status("--url", server.url))
    receivers = {row["ID"]: row for row in table(shown, RECEIVER_COLUMNS)}
    paused = receivers[str(member_id)]
    assert (paused["TOPIC"], paused["GROUP"], paused["STATE"]) == ("orders.*", "billing", "paused")
    seed = receivers[str(watcher_id)]
    assert (seed["TOPIC"], seed["GROUP"], seed["STATE"]) == ("default", "-", "healthy")

    feed = json.loads(succeeded(await mqpy_status("--json", url=server.url)))
    kinds = {(r["id"], r["kind"], r["group"], r["state"]) for r in feed["receivers"]}
    assert kinds == {
        (member_id, "push", "billing", "paused"),
        (watcher_id, "seed", None, "healthy"),
    }

    async with http.post(f"{server.url}/v1/subscriptions/{member_id}/resume") as response:
        assert response.status == 200, await response.text()
    shown = succeeded(await mqpy_status("--url", server.url))
    receivers = {row["ID"]: row for row in table(shown, RECEIVER_COLUMNS)}
    assert (receivers[str(member_id)]["GROUP"], receivers[str(member_id)]["STATE"]) == (
        "billing",
        "healthy",
    )


def test_a_feed_from_a_server_before_groups_still_prints() -> None:
    """An older server's feed has no `group` or `kind`: the table shows "-"."""
    old = {
        "at": 100.0,
        **dict.fromkeys(("readers", "writers", "queue_length", "completed_sends"), 0),
        "dead_letters": 0,
        "topics": [],
        "receivers": [
            {
                "id": 7,
                "url": "http://127.0.0.1:9000/",
                "topic": "default",
                "state": "healthy",
                "in_flight": 0,
                "last_success_at": None,
                "consecutive_failures": 0,
                "recent_failures": [],
            }
        ],
    }
    shown = format_status(decode_feed(old))
    (row,) = table(shown, RECEIVER_COLUMNS)
    assert (row["ID"], row["GROUP"], row["STATE"]) == ("7", "-", "healthy")
    assert "NODE" not in shown and "nodes" not in shown, "no nodes table without nodes"


def test_nodes_print_one_line_each_with_the_answering_one_marked() -> None:
    def node(name: str, address: str, uptime: float, seen: float, held: int) -> dict[str, Any]:
        return {
            "name": name,
            "address": address,
            "started_at": 1000.0 - uptime,
            "seen_at": 1000.0 - seen,
            "uptime_seconds": uptime,
            "seen_age_seconds": seen,
            "held": held,
            "in_flight": held // 2,
        }

    feed = {
        "at": 1000.0,
        **dict.fromkeys(("readers", "writers", "queue_length", "completed_sends"), 0),
        "dead_letters": 0,
        "topics": [],
        "receivers": [],
        "node": "b:2:bb",
        "nodes": [
            node("a:1:aa" + CSI + "2J", "", 3725, 1.4, 7),
            node("b:2:bb", "http://10.0.0.2:8080", 59, 0.2, 0),
        ],
    }
    shown = format_status(decode_feed(feed))
    assert CSI not in shown
    assert table(shown, NODE_COLUMNS) == [
        dict(zip(NODE_COLUMNS, ("a:1:aa\\x9b2J", "-", "1h02m", "7", "3", "1s ago"), strict=True)),
        dict(
            zip(
                NODE_COLUMNS,
                ("b:2:bb (answered)", "http://10.0.0.2:8080", "59s", "0", "0", "0s ago"),
                strict=True,
            )
        ),
    ]
    feed["nodes"] = []
    assert format_status(decode_feed(feed)).endswith(
        "\n\nno live nodes: none sent a heartbeat in the last 10s"
    )


async def test_status_needs_an_admin_key_once_keys_exist(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = start_server(env={"MQPY_ADMIN_KEY": ADMIN_KEY})
    async with http.post(
        server.url + "/v1/keys",
        json={"role": "publisher"},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    ) as response:
        assert response.status == 201
        publisher = (await response.json())["key"]

    refused = await mqpy_status("--url", server.url, key=publisher)
    assert (refused.code, refused.stdout) == (1, "")
    assert refused.stderr == "mqpy status: 403 Forbidden: this needs an admin key\n"

    anonymous = await mqpy_status("--url", server.url)
    assert (anonymous.code, anonymous.stdout) == (1, "")
    assert "401" in anonymous.stderr and "--key or MQPY_KEY" in anonymous.stderr

    shown = succeeded(await mqpy_status("--url", server.url, "--key", ADMIN_KEY))
    assert shown.splitlines()[0].startswith("readers 0  writers 0")
    feed = json.loads(succeeded(await mqpy_status("--json", url=server.url, key=ADMIN_KEY)))
    assert (feed["receivers"], feed["dead_letters"]) == ([], 0)


async def test_status_exit_codes_for_no_server_and_a_bad_url() -> None:
    unreachable = await mqpy_status("--url", f"http://127.0.0.1:{unused_port()}")
    assert (unreachable.code, unreachable.stdout) == (3, "")
    assert "cannot reach the server" in unreachable.stderr

    usage = await mqpy_status("--url", "ftp://127.0.0.1")
    assert (usage.code, usage.stdout) == (2, "")
    assert "is not an http:// or https:// URL" in usage.stderr


def test_ages_read_as_two_units_at_most() -> None:
    assert [format_age(s) for s in (0, 0.9, 42, 185, 7620, 273600, -3)] == [
        "0s",
        "0s",
        "42s",
        "3m05s",
        "2h07m",
        "3d04h",
        "0s",
    ]
