"""--verify-receivers: a receiver is activated only once it echoes a challenge, as WebSub
and SNS confirm subscriptions, so nobody can point the broker at a URL that did not
agree to receive its POSTs."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import ReceiverFactory, ServerFactory
from tests.support.client import SeedClient
from tests.support.dashboard import read_dashboard
from tests.support.load import FAST_RETRIES, unused_port
from tests.support.problems import check_problem
from tests.support.receiver import Behaviour, Received, Receiver

CONFIRM_TYPE = "mqpy.subscription.confirm"


def is_challenge(record: Received) -> bool:
    return record.body.get("type") == CONFIRM_TYPE or "mq-challenge" in {
        name.lower() for name in record.headers
    }


def echo(as_json: bool) -> Behaviour:
    """A receiver that confirms its subscription and accepts every delivery."""

    async def answer(request: web.Request, number: int) -> web.StreamResponse:
        payload = await request.json()
        if payload.get("type") != CONFIRM_TYPE:
            return web.Response(status=204)
        challenge = payload["challenge"]
        assert request.headers["mq-challenge"] == challenge
        if as_json:
            return web.json_response({"challenge": challenge})
        return web.Response(text=challenge)

    return answer


async def answer_ok_without_echo(request: web.Request, number: int) -> web.StreamResponse:
    return web.Response(text="ok")


async def answer_500(request: web.Request, number: int) -> web.StreamResponse:
    return web.Response(status=500)


async def echo_something_else(request: web.Request, number: int) -> web.StreamResponse:
    return web.json_response({"challenge": "not-the-one-you-sent"})


@pytest.fixture
def verifying_client(start_server: ServerFactory, http: aiohttp.ClientSession) -> SeedClient:
    server = start_server("--verify-receivers", *FAST_RETRIES)
    return SeedClient(http, server.url)


@pytest.mark.parametrize("as_json", [False, True], ids=["plain-text", "json"])
async def test_a_receiver_that_echoes_the_challenge_is_connected_and_gets_deliveries(
    verifying_client: SeedClient, start_receiver: ReceiverFactory, as_json: bool
) -> None:
    receiver = await start_receiver(echo(as_json))
    await verifying_client.connect_receiver(receiver.url)
    [challenge] = receiver.attempts
    assert is_challenge(challenge)
    assert isinstance(challenge.body.get("challenge"), str) and challenge.body["challenge"]
    sender = await verifying_client.connect_sender()
    sent = await verifying_client.send(sender, "confirmed")
    received = await receiver.wait_for(2)
    assert received[1].text == "confirmed"
    assert received[1].message_id == sent["message_id"]


async def test_every_confirmation_carries_a_new_challenge(
    verifying_client: SeedClient, start_receiver: ReceiverFactory
) -> None:
    receiver = await start_receiver(echo(as_json=False))
    for _ in range(3):
        await verifying_client.connect_receiver(receiver.url)
    challenges = [record.body["challenge"] for record in receiver.attempts]
    assert len(set(challenges)) == 3, challenges


@pytest.mark.parametrize(
    ("behaviour", "why"),
    [
        (answer_ok_without_echo, "did not echo"),
        (echo_something_else, "did not echo"),
        (answer_500, "HTTP 500"),
    ],
    ids=["200-without-echo", "wrong-echo", "500"],
)
async def test_a_receiver_that_does_not_confirm_is_refused(
    verifying_client: SeedClient,
    start_receiver: ReceiverFactory,
    http: aiohttp.ClientSession,
    behaviour: Behaviour,
    why: str,
) -> None:
    refusing = await start_receiver(behaviour)
    problem = await refused_connect(http, verifying_client, refusing.url)
    assert why in problem["detail"], problem
    assert len(refusing.attempts) == 1 and is_challenge(refusing.attempts[0])
    # Not activated: it does not count as a reader, and a message sent next goes to a
    # confirmed receiver but never to it.
    assert (await read_dashboard(http, verifying_client.base_url))["readers"] == 0
    confirmed = await start_receiver(echo(as_json=False))
    await verifying_client.connect_receiver(confirmed.url)
    sender = await verifying_client.connect_sender()
    await verifying_client.send(sender, "only for the confirmed one")
    await confirmed.wait_for(2)
    assert len(refusing.attempts) == 1, [record.body for record in refusing.attempts]


async def test_a_receiver_that_is_not_listening_is_refused(
    verifying_client: SeedClient, http: aiohttp.ClientSession
) -> None:
    url = f"http://127.0.0.1:{unused_port()}/hook"
    problem = await refused_connect(http, verifying_client, url)
    assert "failed" in problem["detail"] or "cannot connect" in problem["detail"], problem


async def refused_connect(
    http: aiohttp.ClientSession, client: SeedClient, url: str
) -> dict[str, Any]:
    async with http.post(
        client.base_url + "/connect", json={"ClientURL": url, "mode": "receive"}
    ) as response:
        body = await response.read()
        problem = check_problem(response.status, response.content_type, body, 400, "ClientURL")
    assert "refused" in problem["detail"], problem
    return problem


async def test_without_the_flag_no_challenge_is_sent(
    client: SeedClient, receiver: Receiver
) -> None:
    await client.connect_receiver(receiver.url)
    sender = await client.connect_sender()
    await client.send(sender, "no handshake")
    await receiver.wait_for(1)
    assert [record.text for record in receiver.attempts] == ["no handshake"]
    assert not any(is_challenge(record) for record in receiver.attempts)
