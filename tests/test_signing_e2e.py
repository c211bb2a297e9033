"""Signed deliveries end to end: the real server signs, a real receiver checks.

Every signature here is judged by the `standardwebhooks` reference package with the
secret the receiver was given by /connect, never by the broker's own signing code;
only the test of `mqpy.verify` itself uses ours.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

import mqpy
from mqpy.wire.signing import generate_secret
from tests.conftest import ReceiverFactory, ServerFactory
from tests.support.client import SeedClient
from tests.support.load import FAST_RETRIES
from tests.support.problems import check_problem
from tests.support.server import ServerProcess

ADMIN_KEY = "test-admin-key-for-signing"
# Characters JSON escapes or encodes as several bytes: the signature covers the exact bytes.
TRICKY_BODY = 'signed: ünïcode, "quotes", \\ backslash, \u2028 line separator, emoji \U0001f600'


@dataclass(frozen=True)
class ReceivedRequest:
    """One POST as the receiver got it: the raw bytes, which is what a signature covers."""

    body: bytes
    headers: dict[str, str]

    @property
    def signatures(self) -> list[str]:
        return self.headers["webhook-signature"].split(" ")


class Recorder:
    """A receiver behaviour that keeps every attempt's raw body and headers, and answers
    the n-th attempt with `answers[n-1]` (204 once the list runs out)."""

    def __init__(self, *answers: web.Response) -> None:
        self.answers = list(answers)
        self.deliveries: list[ReceivedRequest] = []

    async def __call__(self, request: web.Request, number: int) -> web.StreamResponse:
        self.deliveries.append(ReceivedRequest(await request.read(), dict(request.headers)))
        if number <= len(self.answers):
            return self.answers[number - 1]
        return web.Response(status=204)


async def connect_receiver(client: SeedClient, url: str) -> tuple[int, str]:
    """Connect a receiver; its id and the signing secret /connect hands out once."""
    status, data = await client.post("/connect", {"ClientURL": url, "mode": "receive"})
    assert status == 200, data
    secret = data["secret"]
    assert isinstance(secret, str) and secret.startswith("whsec_"), data
    return int(data["id"]), secret


async def rotate(client: SeedClient, receiver_id: int) -> str:
    status, data = await client.post(f"/v1/receivers/{receiver_id}/rotate-secret", {})
    assert status == 200, data
    assert data["id"] == receiver_id
    secret = data["secret"]
    assert isinstance(secret, str) and secret.startswith("whsec_"), data
    return secret


def rejects(secret: str, delivery: ReceivedRequest) -> bool:
    try:
        Webhook(secret).verify(delivery.body, delivery.headers, json_parse=False)
    except WebhookVerificationError:
        return True
    return False


async def test_a_real_delivery_verifies_with_standardwebhooks_and_the_connect_secret(
    client: SeedClient, start_receiver: ReceiverFactory
) -> None:
    recorder = Recorder()
    receiver = await start_receiver(recorder)
    _, secret = await connect_receiver(client, receiver.url)
    sender = await client.connect_sender()
    sent = await client.send(sender, TRICKY_BODY)
    await receiver.wait_for(1)
    [delivery] = recorder.deliveries
    parsed = Webhook(secret).verify(delivery.body, delivery.headers)
    assert parsed == {"body": TRICKY_BODY}
    assert delivery.headers["webhook-id"] == sent["message_id"]
    assert len(delivery.signatures) == 1
    assert rejects(generate_secret(), delivery)


async def test_each_receiver_gets_its_own_secret(
    client: SeedClient, start_receiver: ReceiverFactory
) -> None:
    recorders = [Recorder(), Recorder()]
    receivers = [await start_receiver(recorder) for recorder in recorders]
    secrets = [(await connect_receiver(client, r.url))[1] for r in receivers]
    assert secrets[0] != secrets[1]
    sender = await client.connect_sender()
    await client.send(sender, "to both")
    for receiver in receivers:
        await receiver.wait_for(1)
    for mine, other, recorder in zip(secrets, secrets[::-1], recorders, strict=True):
        [delivery] = recorder.deliveries
        Webhook(mine).verify(delivery.body, delivery.headers)
        assert rejects(other, delivery), "one receiver's secret verified another's delivery"


async def test_a_retry_carries_a_fresh_valid_signature_with_the_same_webhook_id(
    start_server: ServerFactory, start_receiver: ReceiverFactory, http: aiohttp.ClientSession
) -> None:
    # The receiver's Retry-After puts at least a second between
    # the two attempts, so the retry's timestamp, and so its signature, must differ.
    server = start_server("--retry-base", "0.05", "--retry-max", "1s")
    client = SeedClient(http, server.url)
    recorder = Recorder(web.Response(status=503, headers={"Retry-After": "1"}))
    receiver = await start_receiver(recorder)
    _, secret = await connect_receiver(client, receiver.url)
    sender = await client.connect_sender()
    sent = await client.send(sender, "try me twice")
    await receiver.wait_for(1, timeout=20)
    first, retry = recorder.deliveries
    for delivery in (first, retry):
        assert Webhook(secret).verify(delivery.body, delivery.headers) == {"body": "try me twice"}
        assert delivery.headers["webhook-id"] == sent["message_id"]
    assert [first.headers["mq-attempt"], retry.headers["mq-attempt"]] == ["1", "2"]
    assert int(retry.headers["webhook-timestamp"]) > int(first.headers["webhook-timestamp"])
    assert retry.signatures != first.signatures


async def test_after_rotation_deliveries_verify_with_the_old_and_the_new_secret(
    client: SeedClient, start_receiver: ReceiverFactory
) -> None:
    recorder = Recorder()
    receiver = await start_receiver(recorder)
    receiver_id, old = await connect_receiver(client, receiver.url)
    new = await rotate(client, receiver_id)
    assert new != old
    sender = await client.connect_sender()
    await client.send(sender, "during the overlap")
    await receiver.wait_for(1)
    [delivery] = recorder.deliveries
    assert len(delivery.signatures) == 2, delivery.headers
    for secret in (old, new):
        assert Webhook(secret).verify(delivery.body, delivery.headers) == {
            "body": "during the overlap"
        }
    assert rejects(generate_secret(), delivery)


async def test_after_the_overlap_window_only_the_new_secret_verifies(
    start_server: ServerFactory, start_receiver: ReceiverFactory, http: aiohttp.ClientSession
) -> None:
    server = start_server("--secret-overlap", "1s", *FAST_RETRIES)
    client = SeedClient(http, server.url)
    recorder = Recorder()
    receiver = await start_receiver(recorder)
    receiver_id, old = await connect_receiver(client, receiver.url)
    new = await rotate(client, receiver_id)
    await asyncio.sleep(1.5)  # past the 1 s overlap
    sender = await client.connect_sender()
    await client.send(sender, "after the overlap")
    await receiver.wait_for(1)
    [delivery] = recorder.deliveries
    assert len(delivery.signatures) == 1, delivery.headers
    Webhook(new).verify(delivery.body, delivery.headers)
    assert rejects(old, delivery), "the rotated-out secret still verifies after its window"


@pytest.fixture
def keyed_server(start_server: ServerFactory) -> ServerProcess:
    return start_server(*FAST_RETRIES, env={"MQPY_ADMIN_KEY": ADMIN_KEY})


async def create_key(http: aiohttp.ClientSession, base_url: str, role: str) -> str:
    async with http.post(
        base_url + "/v1/keys",
        json={"role": role},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    ) as response:
        data = await response.json()
        assert response.status == 201, data
        return str(data["key"])


async def test_rotating_another_keys_receiver_is_forbidden(
    keyed_server: ServerProcess, start_receiver: ReceiverFactory, http: aiohttp.ClientSession
) -> None:
    owner_key = await create_key(http, keyed_server.url, "subscriber")
    stranger_key = await create_key(http, keyed_server.url, "subscriber")
    receiver = await start_receiver()
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {owner_key}"}) as owner_http,
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {stranger_key}"}) as stranger,
    ):
        owner = SeedClient(owner_http, keyed_server.url)
        receiver_id, _ = await connect_receiver(owner, receiver.url)
        path = f"/v1/receivers/{receiver_id}/rotate-secret"
        async with stranger.post(keyed_server.url + path) as response:
            check_problem(response.status, response.content_type, await response.read(), 403)
        # The owner may, and so may an admin: the 403 is about ownership, not the route.
        await rotate(owner, receiver_id)
        async with http.post(
            keyed_server.url + path, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        ) as response:
            assert response.status == 200
        async with http.post(keyed_server.url + path) as response:
            check_problem(response.status, response.content_type, await response.read(), 401)


async def test_mqpy_verify_accepts_a_real_delivery_and_rejects_a_tampered_one(
    client: SeedClient, start_receiver: ReceiverFactory
) -> None:
    recorder = Recorder()
    receiver = await start_receiver(recorder)
    _, secret = await connect_receiver(client, receiver.url)
    sender = await client.connect_sender()
    await client.send(sender, "pay 10 EUR")
    await receiver.wait_for(1)
    [delivery] = recorder.deliveries
    mqpy.verify(delivery.body, delivery.headers, secret)
    tampered = delivery.body.replace(b"10 EUR", b"99 EUR")
    assert tampered != delivery.body
    with pytest.raises(mqpy.InvalidSignature):
        mqpy.verify(tampered, delivery.headers, secret)
    with pytest.raises(mqpy.InvalidSignature):
        mqpy.verify(delivery.body, delivery.headers, generate_secret())
