"""Idempotent publish end to end: a repeat of an idempotency key answers with the first
message's id, says it is a duplicate and delivers nothing more; keys are per API key
and survive a crash."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.conftest import ReceiverFactory, ServerFactory
from tests.support.load import FAST_RETRIES
from tests.support.receiver import Receiver
from tests.support.routing import SETTLE_SECONDS, Broker, counts, wait_for_texts

ADMIN_KEY = "routing-admin-key-5c2a9e7d41"


@pytest.fixture
def broker(start_server: ServerFactory, http: aiohttp.ClientSession) -> Broker:
    return Broker(http, start_server(*FAST_RETRIES).url)


async def settled(receiver: Receiver, expected: dict[str, int]) -> None:
    """Wait for the expected texts, give strays a moment, then check the exact counts."""
    await wait_for_texts(receiver, expected)
    await asyncio.sleep(SETTLE_SECONDS)
    assert counts(receiver.received) == expected


async def test_the_idempotency_key_header_on_a_native_publish(
    broker: Broker, start_receiver: ReceiverFactory
) -> None:
    receiver = await start_receiver()
    await broker.connect_receiver(receiver.url, topic="pay")
    first = await broker.publish("pay", "charge 1", {"Idempotency-Key": "charge-1"})
    assert first.status == 201, first.raw
    again = await broker.publish("pay", "charge 1", {"Idempotency-Key": "charge-1"})
    assert again.status == 200, again.raw
    assert again.data == {"id": first.data["id"], "topic": "pay", "duplicate": True}
    assert first.data["duplicate"] is False
    # The key, not the body, makes the repeat: a changed body is still the same message.
    changed = await broker.publish("pay", "charge 1, edited", {"Idempotency-Key": "charge-1"})
    assert (changed.status, changed.data["id"]) == (200, first.data["id"])
    other = await broker.publish("pay", "charge 2", {"Idempotency-Key": "charge-2"})
    assert other.status == 201 and other.data["id"] != first.data["id"]
    # The key as a body field means the same as the header.
    field = await broker.publish("pay", "charge 2", idempotency_key="charge-2")
    assert (field.status, field.data["id"], field.data["duplicate"]) == (
        200,
        other.data["id"],
        True,
    )
    await settled(receiver, {"charge 1": 1, "charge 2": 1})
    by_text = {record.text: record.message_id for record in receiver.received}
    assert by_text == {"charge 1": first.data["id"], "charge 2": other.data["id"]}


async def test_the_idempotency_key_on_send(broker: Broker, start_receiver: ReceiverFactory) -> None:
    receiver = await start_receiver()
    await broker.connect_receiver(receiver.url, topic="pay")
    sender = await broker.connect_sender(topic="pay")
    first = await broker.send(sender, "refund 1", idempotency_key="refund-1")
    assert "duplicate" not in first or first["duplicate"] is False, first
    again = await broker.send(sender, "refund 1", idempotency_key="refund-1")
    assert again == {
        "status": "Message enqueued.",
        "id": sender,
        "message_id": first["message_id"],
        "duplicate": True,
    }
    header = {"Idempotency-Key": "refund-1"}
    by_header = await broker.send(sender, "refund 1", headers=header)
    assert (by_header["message_id"], by_header.get("duplicate")) == (first["message_id"], True)
    second = await broker.send(sender, "refund 2", idempotency_key="refund-2")
    assert second["message_id"] != first["message_id"] and "duplicate" not in second
    plain = [await broker.send(sender, "no key") for _ in range(2)]
    assert plain[0]["message_id"] != plain[1]["message_id"], "no key: every send is new"
    # Seed and native publishes by the same key holder share the keys.
    native = await broker.publish("pay", "refund 2", idempotency_key="refund-2")
    assert (native.status, native.data["id"]) == (200, second["message_id"])
    await settled(receiver, {"refund 1": 1, "refund 2": 1, "no key": 2})


async def test_a_header_and_a_field_that_differ_are_400(broker: Broker) -> None:
    sender = await broker.connect_sender(topic="pay")
    body = {"id": sender, "body": "x", "idempotency_key": "a"}
    answer = await broker.call("POST", "/send", body, {"Idempotency-Key": "b"})
    answer.problem(400, "idempotency_key")
    answer = await broker.publish("pay", "x", {"Idempotency-Key": "b"}, idempotency_key="a")
    answer.problem(400, "idempotency_key")
    for bad in ["", "k" * 201, 5]:
        answer = await broker.call("POST", "/send", {**body, "idempotency_key": bad})
        answer.problem(400, "idempotency_key")
    # The same key in both places is fine.
    same = await broker.publish("pay", "x", {"Idempotency-Key": "a"}, idempotency_key="a")
    assert same.status == 201, same.raw


async def test_idempotency_keys_are_per_api_key(
    start_server: ServerFactory, http: aiohttp.ClientSession, start_receiver: ReceiverFactory
) -> None:
    server = start_server(*FAST_RETRIES, env={"MQPY_ADMIN_KEY": ADMIN_KEY})
    admin = Broker(http, server.url, ADMIN_KEY)
    alice = admin.as_key((await admin.ok("POST", "/v1/keys", {"role": "publisher"}, 201))["key"])
    bob = admin.as_key((await admin.ok("POST", "/v1/keys", {"role": "publisher"}, 201))["key"])
    receiver = await start_receiver()
    await admin.connect_receiver(receiver.url, topic="pay")

    by_alice = await alice.publish("pay", "alice's", {"Idempotency-Key": "order-7"})
    by_bob = await bob.publish("pay", "bob's", {"Idempotency-Key": "order-7"})
    assert (by_alice.status, by_bob.status) == (201, 201), (by_alice.raw, by_bob.raw)
    assert by_alice.data["id"] != by_bob.data["id"]
    again = await alice.publish("pay", "alice's", {"Idempotency-Key": "order-7"})
    assert (again.status, again.data["id"]) == (200, by_alice.data["id"])
    bob_sender = await bob.connect_sender(topic="pay")
    bob_again = await bob.send(bob_sender, "bob's", idempotency_key="order-7")
    assert (bob_again["message_id"], bob_again.get("duplicate")) == (by_bob.data["id"], True)
    await settled(receiver, {"alice's": 1, "bob's": 1})


async def test_an_idempotency_key_survives_a_crash(
    start_server: ServerFactory, http: aiohttp.ClientSession, start_receiver: ReceiverFactory
) -> None:
    server = start_server(*FAST_RETRIES)
    broker = Broker(http, server.url)
    receiver = await start_receiver()
    await broker.connect_receiver(receiver.url, topic="pay")
    first = await broker.publish("pay", "once", {"Idempotency-Key": "crash-1"})
    assert first.status == 201
    await wait_for_texts(receiver, ["once"])
    await asyncio.to_thread(server.kill)
    await asyncio.to_thread(server.restart)
    async with aiohttp.ClientSession() as fresh:
        after = Broker(fresh, server.url)
        again = await after.publish("pay", "once", {"Idempotency-Key": "crash-1"})
        assert (again.status, again.data["id"]) == (200, first.data["id"]), again.raw
        await after.publish_new("pay", "fence")
        await wait_for_texts(receiver, ["fence"])
    await asyncio.sleep(SETTLE_SECONDS)
    # The crash may repeat the delivery (at least once), never make a second message.
    assert {r.message_id for r in receiver.received if r.text == "once"} == {first.data["id"]}
