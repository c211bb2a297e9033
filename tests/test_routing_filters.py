"""Attribute filters end to end: receivers connected with each kind of condition get
exactly the messages that match, delivered with their attributes; bad filters and bad
attributes are refused with a 400 that names the field."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from tests.conftest import ReceiverFactory, ServerFactory
from tests.support.load import FAST_RETRIES, wait_until
from tests.support.receiver import Receiver
from tests.support.routing import SETTLE_SECONDS, Broker, counts, wait_for_texts

MESSAGES: dict[str, dict[str, str]] = {
    "m0 none": {},
    "m1 eu": {"region": "eu"},
    "m2 us high": {"region": "us", "priority": "high"},
    "m3 apac ord-1": {"region": "apac", "sku": "ord-1"},
    "m4 eu ord-2": {"region": "eu", "sku": "ord-2"},
    "m5 eu ord-3 low": {"region": "eu", "sku": "ord-3", "priority": "low"},
    "m6 order": {"sku": "order"},  # starts with "ord", not with "ord-"
    "m7 EU": {"region": "EU"},  # values are compared exactly
    "m8 empty priority": {"priority": ""},  # present, though empty
}

# Filter, and the messages it lets through; written out by hand, not computed.
FILTERS: dict[str, tuple[dict[str, Any] | None, list[str]]] = {
    "equal": ({"region": "eu"}, ["m1 eu", "m4 eu ord-2", "m5 eu ord-3 low"]),
    "any of": (
        {"region": ["eu", "us"]},
        ["m1 eu", "m2 us high", "m4 eu ord-2", "m5 eu ord-3 low"],
    ),
    "prefix": (
        {"sku": {"prefix": "ord-"}},
        ["m3 apac ord-1", "m4 eu ord-2", "m5 eu ord-3 low"],
    ),
    "exists": (
        {"priority": {"exists": True}},
        ["m2 us high", "m5 eu ord-3 low", "m8 empty priority"],
    ),
    "absent": (
        {"priority": {"exists": False}},
        ["m0 none", "m1 eu", "m3 apac ord-1", "m4 eu ord-2", "m6 order", "m7 EU"],
    ),
    "all of": (
        {"region": "eu", "sku": {"prefix": "ord-"}, "priority": {"exists": False}},
        ["m4 eu ord-2"],
    ),
    "none": (None, list(MESSAGES)),
}


@pytest.fixture
def broker(start_server: ServerFactory, http: aiohttp.ClientSession) -> Broker:
    return Broker(http, start_server(*FAST_RETRIES).url)


async def test_each_receiver_gets_exactly_the_messages_its_filter_matches(
    broker: Broker, start_receiver: ReceiverFactory
) -> None:
    receivers: dict[str, Receiver] = {}
    for name, (filter_, _) in FILTERS.items():
        receivers[name] = await start_receiver()
        await broker.connect_receiver(receivers[name].url, topic="catalog", filter=filter_)
    sender = await broker.connect_sender(topic="catalog")
    for number, (text, attributes) in enumerate(MESSAGES.items()):
        if number % 2:  # half through the seed protocol, half through the native API
            await broker.send(sender, text, attributes=attributes)
        else:
            await broker.publish_new("catalog", text, attributes=attributes)

    for name, (_, wanted) in FILTERS.items():
        await wait_for_texts(receivers[name], wanted)
    await asyncio.sleep(SETTLE_SECONDS)
    for name, (filter_, wanted) in FILTERS.items():
        got = counts(receivers[name].received)
        assert got == {text: 1 for text in wanted}, f"filter {name} {filter_}: got {dict(got)}"
        for record in receivers[name].received:
            attributes = MESSAGES[str(record.text)]
            expected: dict[str, object] = {"body": record.text}
            if attributes:
                expected["attributes"] = attributes
            assert record.body == expected, (name, record.body)


async def test_a_filter_on_a_group_and_a_pattern(
    broker: Broker, start_receiver: ReceiverFactory
) -> None:
    members = [await start_receiver() for _ in range(2)]
    for member in members:
        await broker.connect_receiver(
            member.url, topic="billing.>", group="eu-team", filter={"region": "eu"}
        )
    published = {
        "billing.invoice": [("inv eu", "eu"), ("inv us", "us")],
        "billing.refund.card": [("ref eu", "eu"), ("ref apac", "apac")],
        "shipping": [("ship eu", "eu")],
    }
    for topic, messages in published.items():
        for text, region in messages:
            await broker.publish_new(topic, text, attributes={"region": region})
    wanted = ["inv eu", "ref eu"]
    await wait_until(
        lambda: set(wanted) <= {str(r.text) for m in members for r in m.received},
        15,
        "the group's matching messages",
    )
    await asyncio.sleep(SETTLE_SECONDS)
    got = counts([record for member in members for record in member.received])
    assert got == {text: 1 for text in wanted}


BAD_FILTERS: list[Any] = [
    "region",
    ["region"],
    {"region": 5},
    {"region": []},
    {"region": [1, 2]},
    {"region": {"prefix": 5}},
    {"region": {"exists": "yes"}},
    {"region": {"suffix": "x"}},
    {"region": {"prefix": "a", "exists": True}},
    {"": "x"},
]


async def test_a_bad_filter_is_400(broker: Broker) -> None:
    url = "http://127.0.0.1:9/hook"
    for filter_ in BAD_FILTERS:
        body = {"ClientURL": url, "mode": "receive", "filter": filter_}
        answer = await broker.call("POST", "/connect", body)
        assert answer.status == 400, (filter_, answer.status, answer.raw)
        answer.problem(400, "filter")
        native = {"url": url, "topic": "t", "filter": filter_}
        answer = await broker.call("POST", "/v1/subscriptions", native)
        assert answer.status == 400, (filter_, answer.status, answer.raw)
        answer.problem(400, "filter")
    listed = await broker.ok("GET", "/v1/subscriptions")
    assert listed["subscriptions"] == [], "a refused subscription was made anyway"


async def test_a_filter_on_a_sender_is_400(broker: Broker) -> None:
    body = {"ClientURL": "", "mode": "send", "filter": {"a": "b"}}
    (await broker.call("POST", "/connect", body)).problem(400, "filter")


BAD_ATTRIBUTES: list[Any] = [
    {"n": 5},
    {"n": None},
    {"n": ["a"]},
    ["a"],
    "a=b",
    {"": "x"},
    {"x" * 129: "y"},
    {"n": "v" * 1025},
    {f"a{n}": "v" for n in range(101)},
]


async def test_bad_attributes_are_400_and_publish_nothing(
    broker: Broker, start_receiver: ReceiverFactory
) -> None:
    receiver = await start_receiver()
    await broker.connect_receiver(receiver.url, topic="attrs")
    sender = await broker.connect_sender(topic="attrs")
    for attributes in BAD_ATTRIBUTES:
        bad = {"id": sender, "body": "bad", "attributes": attributes}
        answer = await broker.call("POST", "/send", bad)
        assert answer.status == 400, (attributes, answer.status, answer.raw)
        answer.problem(400, "attributes")
        answer = await broker.publish("attrs", "bad", attributes=attributes)
        assert answer.status == 400, (attributes, answer.status, answer.raw)
        answer.problem(400, "attributes")
    # The largest valid attributes pass.
    most = {f"a{n}": "v" for n in range(99)} | {"x" * 128: "v" * 1024}
    await broker.publish_new("attrs", "good", attributes=most)
    await wait_for_texts(receiver, ["good"])
    await asyncio.sleep(SETTLE_SECONDS)
    assert [record.text for record in receiver.received] == ["good"]
    assert receiver.received[0].body["attributes"] == most


async def test_changing_a_subscriptions_filter_changes_what_it_gets(
    broker: Broker, start_receiver: ReceiverFactory
) -> None:
    receiver = await start_receiver()
    made = await broker.subscribe(receiver.url, "catalog", filter={"region": "eu"})
    path = f"/v1/subscriptions/{made['id']}"

    async def round_of(tag: str) -> None:
        for region in ("eu", "us"):
            await broker.publish_new("catalog", f"{tag} {region}", attributes={"region": region})
        await broker.publish_new("catalog", f"{tag} none")

    await round_of("first")
    changed = await broker.ok("PATCH", path, {"filter": {"region": ["us"]}})
    assert changed["filter"] == {"region": ["us"]}
    await round_of("second")
    cleared = await broker.ok("PATCH", path, {"filter": None})
    assert cleared["filter"] is None
    await round_of("third")

    wanted = ["first eu", "second us", "third eu", "third us", "third none"]
    await wait_for_texts(receiver, wanted)
    await asyncio.sleep(SETTLE_SECONDS)
    assert counts(receiver.received) == {text: 1 for text in wanted}


async def test_a_message_nobody_took_reaches_only_a_subscription_starting_earlier(
    broker: Broker, start_receiver: ReceiverFactory
) -> None:
    # Published while nothing is subscribed, it is done; a subscription starting at
    # the earliest gets it if its filter passes it, one starting now does not.
    await broker.publish_new("lonely", "for the us", attributes={"region": "us"})
    eu = await start_receiver()
    await broker.connect_receiver(
        eu.url, topic="lonely", filter={"region": "eu"}, start_at="earliest"
    )
    await broker.publish_new("lonely", "for the eu", attributes={"region": "eu"})
    await wait_for_texts(eu, ["for the eu"])
    now = await start_receiver()
    await broker.subscribe(now.url, "lonely", filter={"region": {"prefix": "u"}})
    us = await start_receiver()
    us_filter = {"region": {"prefix": "u"}}
    await broker.subscribe(us.url, "lonely", filter=us_filter, start_at="earliest")
    await wait_for_texts(us, ["for the us"])
    await asyncio.sleep(SETTLE_SECONDS)
    assert [record.text for record in eu.attempts] == ["for the eu"]
    assert [record.text for record in us.attempts] == ["for the us"]
    assert now.attempts == []
