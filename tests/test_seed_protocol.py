"""The MQ Go protocol exactly as the seed README describes it, seen from a client.

Every test talks HTTP to a real `mqpy serve` process and real receiver servers.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from itertools import pairwise
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import ReceiverFactory, ServerFactory
from tests.support.client import SeedClient
from tests.support.dashboard import read_dashboard
from tests.support.problems import check_problem
from tests.support.receiver import Receiver
from tests.support.server import ServerProcess

MAX_ID = 2**53


async def post(
    http: aiohttp.ClientSession,
    url: str,
    body: Any,
) -> tuple[int, str, dict[str, Any]]:
    """POST JSON; the status, the media type and the decoded answer."""
    async with http.post(url, json=body) as response:
        return response.status, response.content_type, await response.json(content_type=None)


async def post_bytes(
    http: aiohttp.ClientSession, url: str, data: bytes, content_type: str | None
) -> tuple[int, str, bytes]:
    """POST raw bytes with the given Content-Type, or with none at all."""
    headers = {} if content_type is None else {"Content-Type": content_type}
    skip = () if content_type is not None else ("Content-Type",)
    async with http.post(url, data=data, headers=headers, skip_auto_headers=skip) as response:
        return response.status, response.content_type, await response.read()


def lower_keys(headers: dict[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


# -- the three answers, word for word ---------------------------------------------------


async def test_connect_answers_exactly_an_integer_id(
    http: aiohttp.ClientSession, server: ServerProcess
) -> None:
    for mode in ("send", "receive"):
        body = {"ClientURL": "127.0.0.1:9/mqg", "mode": mode}
        status, content_type, data = await post(http, server.url + "/connect", body)
        assert status == 200, data
        assert content_type == "application/json"
        # A receiver also gets its signing secret, once, beside the seed's id.
        assert list(data) == (["id"] if mode == "send" else ["id", "secret"])
        assert type(data["id"]) is int
        assert 0 < data["id"] < MAX_ID


async def test_send_answers_status_sender_id_and_message_id(
    http: aiohttp.ClientSession, client: SeedClient, server: ServerProcess
) -> None:
    sender = await client.connect_sender()
    status, content_type, data = await post(
        http, server.url + "/send", {"id": sender, "body": "Here is the message body."}
    )
    assert status == 200, data
    assert content_type == "application/json"
    assert set(data) == {"status", "id", "message_id"}
    assert data["status"] == "Message enqueued."
    assert data["id"] == sender and type(data["id"]) is int
    assert isinstance(data["message_id"], str) and data["message_id"]


async def test_message_ids_are_distinct(client: SeedClient) -> None:
    sender = await client.connect_sender()
    answers = [await client.send(sender, f"m{n}") for n in range(20)]
    assert len({a["message_id"] for a in answers}) == 20


async def test_disconnect_answers_id_and_message(
    http: aiohttp.ClientSession, client: SeedClient, server: ServerProcess
) -> None:
    for connection in (await client.connect_sender(), await client.connect_receiver("x.test/h")):
        status, content_type, data = await post(
            http, server.url + "/disconnect", {"id": connection}
        )
        assert status == 200, data
        assert content_type == "application/json"
        assert data == {"id": connection, "message": "Disconnected."}


# -- what the seed's Go server accepted ---------------------------------------------------


@pytest.mark.parametrize(
    ("url_key", "mode_key", "receive", "send"),
    [
        ("ClientURL", "mode", "receive", "send"),
        ("clienturl", "Mode", "Receive", "Send"),
        ("CLIENTURL", "MODE", "RECEIVE", "SEND"),
        ("clientUrl", "mOdE", "rEcEiVe", "sEnD"),
    ],
)
async def test_keys_and_mode_values_match_case_insensitively(
    http: aiohttp.ClientSession,
    server: ServerProcess,
    receiver: Receiver,
    url_key: str,
    mode_key: str,
    receive: str,
    send: str,
) -> None:
    status, _, data = await post(
        http, server.url + "/connect", {url_key: receiver.url, mode_key: receive}
    )
    assert status == 200, data
    status, _, data = await post(http, server.url + "/connect", {url_key: "", mode_key: send})
    assert status == 200, data
    sender = data["id"]
    status, _, data = await post(http, server.url + "/send", {"ID": sender, "Body": "cased"})
    assert status == 200, data
    (delivery,) = await receiver.wait_for(1)
    assert delivery.body == {"body": "cased"}


async def test_client_url_without_scheme_is_delivered_over_http(
    client: SeedClient, receiver: Receiver
) -> None:
    await client.connect_receiver(f"127.0.0.1:{receiver.port}{receiver.path}")
    sender = await client.connect_sender()
    answer = await client.send(sender, "no scheme")
    (delivery,) = await receiver.wait_for(1)
    assert delivery.body == {"body": "no scheme"}
    assert delivery.message_id == answer["message_id"]


@pytest.mark.parametrize(
    "connect_body",
    [
        {"ClientURL": "", "mode": "send"},
        {"mode": "send"},
        {"ClientURL": "   ", "mode": "send"},
    ],
    ids=["empty", "missing", "blank"],
)
async def test_sender_needs_no_client_url(
    http: aiohttp.ClientSession,
    client: SeedClient,
    server: ServerProcess,
    receiver: Receiver,
    connect_body: dict[str, str],
) -> None:
    await client.connect_receiver(receiver.url)
    status, _, data = await post(http, server.url + "/connect", connect_body)
    assert status == 200, data
    await client.send(data["id"], "from a sender without a URL")
    (delivery,) = await receiver.wait_for(1)
    assert delivery.body == {"body": "from a sender without a URL"}


@pytest.mark.parametrize("slash", ["", "/"], ids=["bare", "trailing-slash"])
async def test_every_route_answers_with_and_without_trailing_slash(
    http: aiohttp.ClientSession, server: ServerProcess, receiver: Receiver, slash: str
) -> None:
    base = server.url

    async def ok(path: str, body: Any) -> dict[str, Any]:
        status, content_type, data = await post(http, base + path + slash, body)
        assert (status, content_type) == (200, "application/json"), (path + slash, data)
        return data

    receiver_id = (await ok("/connect", {"ClientURL": receiver.url, "mode": "receive"}))["id"]
    sender = (await ok("/connect", {"ClientURL": "", "mode": "send"}))["id"]
    answer = await ok("/send", {"id": sender, "body": "slash"})
    (delivery,) = await receiver.wait_for(1)
    assert delivery.message_id == answer["message_id"]
    assert await ok("/v1/dead-letters/redrive", {}) == {"redriven": 0}
    for path, media_type in (("/dashboard", "text/html"), ("/v1/dead-letters", "application/json")):
        async with http.get(base + path + slash) as response:
            assert response.status == 200, path + slash
            assert response.content_type == media_type
    assert await ok("/disconnect", {"id": receiver_id}) == {
        "id": receiver_id,
        "message": "Disconnected.",
    }


# -- connection ids -------------------------------------------------------------------------


async def test_ids_are_positive_below_2_53_distinct_and_random(client: SeedClient) -> None:
    ids = []
    for n in range(50):
        if n % 2:
            ids.append(await client.connect_sender())
        else:
            ids.append(await client.connect_receiver(f"127.0.0.1:9/r{n}"))
    assert all(0 < i < MAX_ID for i in ids)
    assert len(set(ids)) == 50
    # Sequential ids (the seed's) are guessable: issued in order, or one apart.
    assert ids != sorted(ids)
    assert all(abs(b - a) > 1 for a, b in pairwise(ids))
    assert max(ids) - min(ids) > 2**40, "ids are bunched together, not drawn from 2**53"


async def test_a_disconnected_id_stays_dead_and_is_not_handed_out_again(
    client: SeedClient, server: ServerProcess
) -> None:
    gone = await client.connect_sender()
    await client.disconnect(gone)
    fresh = {await client.connect_sender() for _ in range(30)}
    assert gone not in fresh
    for path, body in (("/send", {"id": gone, "body": "x"}), ("/disconnect", {"id": gone})):
        status, _ = await client.post(path, body)
        assert status == 404, path
    # Still refused after a restart: the store remembers, not just this process.
    server.kill()
    server.restart()
    # A new session: the old one's pooled connections died with the first process.
    async with aiohttp.ClientSession() as http:
        after = SeedClient(http, server.url)
        status, _ = await after.post("/send", {"id": gone, "body": "x"})
        assert status == 404
        assert gone not in {await after.connect_sender() for _ in range(10)}


# -- the delivery the server makes --------------------------------------------------------


async def test_delivery_is_json_with_webhook_headers(
    client: SeedClient, receiver: Receiver
) -> None:
    await client.connect_receiver(receiver.url)
    sender = await client.connect_sender()
    before = time.time()
    answer = await client.send(sender, "Here is the message body.")
    (delivery,) = await receiver.wait_for(1)
    headers = lower_keys(delivery.headers)
    assert headers["content-type"].split(";")[0].strip() == "application/json"
    assert delivery.body == {"body": "Here is the message body."}
    assert headers["webhook-id"] == answer["message_id"]
    assert re.fullmatch(r"\d+", headers["webhook-timestamp"]), headers["webhook-timestamp"]
    assert before - 2 <= int(headers["webhook-timestamp"]) <= time.time() + 2
    assert headers["mq-attempt"] == "1"


async def test_body_is_delivered_exactly(client: SeedClient, receiver: Receiver) -> None:
    await client.connect_receiver(receiver.url)
    sender = await client.connect_sender()
    bodies = ["", " spaced ", 'quotes " and \\ backslash', "ünïcødé ✓ 🚀", "line\nbreak\x00nul"]
    for body in bodies:
        await client.send(sender, body)
    received = await receiver.wait_for(len(bodies))
    assert sorted(str(r.text) for r in received) == sorted(bodies)


# -- the dashboard --------------------------------------------------------------------------


async def test_dashboard_shows_the_four_figures(
    http: aiohttp.ClientSession, start_server: ServerFactory, start_receiver: ReceiverFactory
) -> None:
    # A long retry base keeps the failing receiver's deliveries waiting in the queue.
    server = start_server("--retry-base", "60", "--retry-max", "60")
    client = SeedClient(http, server.url)
    assert await read_dashboard(http, server.url) == {
        "readers": 0,
        "writers": 0,
        "queue length": 0,
        "completed sends": 0,
    }

    async def refuse(request: web.Request, number: int) -> web.StreamResponse:
        return web.Response(status=500)

    healthy, failing = await start_receiver(), await start_receiver(refuse)
    await client.connect_receiver(healthy.url)
    await client.connect_receiver(failing.url)
    await client.disconnect(await client.connect_receiver("127.0.0.1:9/gone"))
    await client.disconnect(await client.connect_sender())
    sender = await client.connect_sender()
    for n in range(3):
        await client.send(sender, f"m{n}")
    await healthy.wait_for(3)
    # After its first 500 the failing receiver is paused as a whole (for the 60 s
    # backoff), so one attempt is all it sees.
    await failing.wait_for_attempts(1)

    # Completed sends count deliveries acknowledged; the failing receiver's three wait.
    expected = {"readers": 2, "writers": 1, "queue length": 3, "completed sends": 3}
    deadline = time.monotonic() + 10
    figures = await read_dashboard(http, server.url)
    while figures != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        figures = await read_dashboard(http, server.url)
    assert figures == expected


# -- refusals ---------------------------------------------------------------------------------


async def test_send_refusals(
    http: aiohttp.ClientSession, client: SeedClient, server: ServerProcess
) -> None:
    receiver_id = await client.connect_receiver("127.0.0.1:9/hook")
    gone = await client.connect_sender()
    await client.disconnect(gone)
    unknown = 1234567
    for sender, expected in ((receiver_id, 403), (unknown, 404), (gone, 404)):
        status, content_type, body = await post_bytes(
            http,
            server.url + "/send",
            b'{"id": %d, "body": "x"}' % sender,
            "application/json",
        )
        check_problem(status, content_type, body, expected)


async def test_disconnect_of_unknown_id_is_404(
    http: aiohttp.ClientSession, client: SeedClient, server: ServerProcess
) -> None:
    gone = await client.connect_receiver("127.0.0.1:9/hook")
    await client.disconnect(gone)
    for connection in (1234567, gone):
        status, content_type, body = await post_bytes(
            http, server.url + "/disconnect", b'{"id": %d}' % connection, "application/json"
        )
        check_problem(status, content_type, body, 404)


@pytest.mark.parametrize(
    "content_type",
    [None, "application/x-www-form-urlencoded", "text/plain", "application/octet-stream"],
    ids=["none", "curl-d-form", "text", "octet-stream"],
)
async def test_body_is_read_whatever_the_content_type(
    http: aiohttp.ClientSession,
    server: ServerProcess,
    receiver: Receiver,
    content_type: str | None,
) -> None:
    async def call(path: str, raw: str) -> dict[str, Any]:
        status, media_type, body = await post_bytes(
            http, server.url + path, raw.encode(), content_type
        )
        assert (status, media_type) == (200, "application/json"), (path, body)
        answer: dict[str, Any] = json.loads(body)
        return answer

    await call("/connect", f'{{"ClientURL": "{receiver.url}", "mode": "receive"}}')
    sender = (await call("/connect", '{"ClientURL": "", "mode": "send"}'))["id"]
    answer = await call("/send", f'{{"id": {sender}, "body": "raw bytes"}}')
    (delivery,) = await receiver.wait_for(1)
    assert delivery.body == {"body": "raw bytes"}
    assert delivery.message_id == answer["message_id"]
    assert await call("/disconnect", f'{{"id": {sender}}}') == {
        "id": sender,
        "message": "Disconnected.",
    }
