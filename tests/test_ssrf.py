"""The broker must not be usable as a weapon against what sits next to it (SSRF).

Receiver URLs are judged at /connect and again at every delivery, after DNS resolution,
so a receiver registered while it was allowed, or a name whose address changes later
(DNS rebinding), is still refused when the broker is about to connect. Deliveries
never follow redirects.
"""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import ReceiverFactory, ServerFactory
from tests.support.client import SeedClient
from tests.support.dashboard import read_dashboard
from tests.support.load import FAST_RETRIES, wait_for_dead_letters
from tests.support.problems import check_problem
from tests.support.receiver import Receiver

# Fast retries and a small budget: a refused delivery is dead-lettered within seconds.
FAIL_FAST = (*FAST_RETRIES, "--max-attempts", "2")


async def connect(http: aiohttp.ClientSession, base_url: str, url: str) -> tuple[int, str, bytes]:
    async with http.post(
        base_url + "/connect", json={"ClientURL": url, "mode": "receive"}
    ) as response:
        return response.status, response.content_type, await response.read()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://169.254.10.20:8080/hook", "link-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://[::ffff:169.254.169.254]/", "169.254.169.254"),
    ],
)
async def test_link_local_and_metadata_receivers_are_refused_at_connect(
    client: SeedClient, http: aiohttp.ClientSession, url: str, reason: str
) -> None:
    status, content_type, body = await connect(http, client.base_url, url)
    problem = check_problem(status, content_type, body, 400, field="ClientURL")
    assert reason in problem["detail"], problem
    assert "refused" in problem["detail"], problem
    # Nothing was registered, so no delivery will ever be attempted there.
    figures = await read_dashboard(http, client.base_url)
    assert figures["readers"] == 0


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:9/hook", "http://localhost:9/hook", "http://10.0.0.1/hook"],
)
async def test_deny_private_receivers_refuses_loopback_and_private_at_connect(
    start_server: ServerFactory, http: aiohttp.ClientSession, url: str
) -> None:
    server = start_server("--deny-private-receivers", *FAIL_FAST)
    status, content_type, body = await connect(http, server.url, url)
    problem = check_problem(status, content_type, body, 400, field="ClientURL")
    assert "--deny-private-receivers" in problem["detail"], problem
    assert any(word in problem["detail"] for word in ("loopback", "private")), problem


async def test_private_receivers_are_allowed_without_the_flag(
    client: SeedClient, receiver: Receiver
) -> None:
    """The control for the test above: the same kind of URL is fine by default."""
    await client.connect_receiver(receiver.url)
    await client.connect_receiver(receiver.url.replace("127.0.0.1", "localhost"))


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_a_receiver_registered_before_deny_private_is_refused_at_delivery(
    start_server: ServerFactory,
    start_receiver: ReceiverFactory,
    http: aiohttp.ClientSession,
    host: str,
) -> None:
    """The delivery-time check: the broker judges the address it is about to connect
    to, not what /connect once saw. This is also what stops DNS rebinding."""
    receiver = await start_receiver()
    first = start_server(*FAIL_FAST)
    client = SeedClient(http, first.url)
    receiver_id = await client.connect_receiver(receiver.url.replace("127.0.0.1", host))
    sender = await client.connect_sender()
    await client.send(sender, "allowed")
    await receiver.wait_for(1)
    assert first.terminate() == 0

    second = start_server("--deny-private-receivers", *FAIL_FAST, data_dir=first.data_dir)
    client = SeedClient(http, second.url)
    refused = (await client.send(sender, "refused"))["message_id"]
    [letter] = await wait_for_dead_letters(client, 1)
    assert letter["message_id"] == refused
    assert letter["receiver_id"] == receiver_id
    assert "refused" in letter["last_error"], letter
    assert "--deny-private-receivers" in letter["last_error"], letter
    if host == "localhost":
        # Judged on the address the name resolved to, not on the name.
        assert "localhost resolves to" in letter["last_error"], letter
    assert [record.text for record in receiver.attempts] == ["allowed"]
    assert "refused" in second.log


async def test_deliveries_do_not_follow_redirects(
    start_server: ServerFactory, start_receiver: ReceiverFactory, http: aiohttp.ClientSession
) -> None:
    target = await start_receiver()

    async def redirect(request: web.Request, number: int) -> web.StreamResponse:
        return web.Response(status=307, headers={"Location": target.url})

    redirecting = await start_receiver(redirect)
    server = start_server(*FAIL_FAST)
    client = SeedClient(http, server.url)
    await client.connect_receiver(redirecting.url)
    sender = await client.connect_sender()
    sent = (await client.send(sender, "stay here"))["message_id"]
    [letter] = await wait_for_dead_letters(client, 1)
    assert letter["message_id"] == sent
    assert "307" in letter["last_error"], letter
    assert len(redirecting.attempts) == 2
    assert target.attempts == [], "the broker followed a redirect to another receiver"


async def test_a_refused_address_is_never_contacted_not_even_to_confirm(
    start_server: ServerFactory, start_receiver: ReceiverFactory, http: aiohttp.ClientSession
) -> None:
    """The address is judged before any connection: with --verify-receivers, a refused
    receiver does not even get the confirmation challenge."""
    receiver = await start_receiver()
    server = start_server("--deny-private-receivers", "--verify-receivers", *FAIL_FAST)
    status, content_type, body = await connect(http, server.url, receiver.url)
    check_problem(status, content_type, body, 400, field="ClientURL")
    assert receiver.attempts == []


async def test_the_confirmation_challenge_does_not_follow_redirects(
    start_server: ServerFactory, start_receiver: ReceiverFactory, http: aiohttp.ClientSession
) -> None:
    async def echo(request: web.Request, number: int) -> web.StreamResponse:
        return web.Response(text=request.headers.get("mq-challenge", ""))

    target = await start_receiver(echo)

    async def redirect(request: web.Request, number: int) -> web.StreamResponse:
        return web.Response(status=307, headers={"Location": target.url})

    redirecting = await start_receiver(redirect)
    server = start_server("--verify-receivers", *FAIL_FAST)
    status, content_type, body = await connect(http, server.url, redirecting.url)
    problem = check_problem(status, content_type, body, 400, field="ClientURL")
    assert "307" in problem["detail"], problem
    assert len(redirecting.attempts) == 1
    assert target.attempts == [], "the challenge followed a redirect to another receiver"
    # The control: the echoing receiver itself is confirmed when asked directly.
    status, _, body = await connect(http, server.url, target.url)
    assert status == 200, body
