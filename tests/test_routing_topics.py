"""Topics and patterns end to end: each receiver gets exactly the messages its topic or
NATS pattern names (`orders.*` one segment, `orders.>` any depth), a message nothing
matches waits for its first subscription, and native push subscriptions (pattern,
filter, pause and resume) route the same way."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.conftest import ReceiverFactory, ServerFactory
from tests.support.load import FAST_RETRIES
from tests.support.receiver import Receiver
from tests.support.routing import SETTLE_SECONDS, Broker, counts, texts, wait_for_texts

TOPICS = ["orders.eu", "orders.eu.paris", "orders.us", "orders", "other"]


@pytest.fixture
def broker(start_server: ServerFactory, http: aiohttp.ClientSession) -> Broker:
    return Broker(http, start_server(*FAST_RETRIES).url)


async def _publish(broker: Broker, how: str, sender: int, topic: str, text: str) -> None:
    if how == "seed":
        await broker.send(sender, text, topic=topic)
    else:
        await broker.publish_new(topic, text)


@pytest.mark.parametrize("how", ["seed", "native"])
async def test_each_receiver_gets_exactly_what_its_pattern_names(
    how: str, broker: Broker, start_receiver: ReceiverFactory
) -> None:
    patterns = ["orders.*", "orders.>", "orders.eu", "default"]
    receivers: dict[str, Receiver] = {}
    ids: dict[str, int] = {}
    for pattern in patterns:
        receivers[pattern] = await start_receiver()
        topic = None if pattern == "default" else pattern  # no topic means "default"
        ids[pattern] = await broker.connect_receiver(receivers[pattern].url, topic=topic)
    sender = await broker.connect_sender()
    for topic in TOPICS:
        await _publish(broker, how, sender, topic, f"to {topic}")
    await broker.send(sender, "to default")  # a seed sender's own topic is "default"

    expected = {
        "orders.*": ["to orders.eu", "to orders.us"],
        "orders.>": ["to orders.eu", "to orders.eu.paris", "to orders.us"],
        "orders.eu": ["to orders.eu"],
        "default": ["to default"],
    }
    for pattern, wanted in expected.items():
        await wait_for_texts(receivers[pattern], wanted)
    await asyncio.sleep(SETTLE_SECONDS)
    for pattern, wanted in expected.items():
        got = counts(receivers[pattern].received)
        assert got == {text: 1 for text in wanted}, f"{pattern} got {dict(got)}"
        for record in receivers[pattern].received:
            assert record.headers.get("mq-topic") == str(record.text).removeprefix("to "), (
                pattern,
                record.headers,
            )
            assert record.headers.get("mq-subscription-id") == str(ids[pattern])

    # "orders" and "other" matched nothing: done, they reach only a receiver that asks.
    late = await start_receiver()
    await broker.connect_receiver(late.url, topic="other")
    replaying = await start_receiver()
    await broker.connect_receiver(replaying.url, topic="other", start_at="earliest")
    await wait_for_texts(replaying, ["to other"])
    await asyncio.sleep(SETTLE_SECONDS)
    assert texts(replaying.received) == ["to other"]
    assert late.received == []


async def test_a_late_subscriber_gets_no_message_another_already_took(
    broker: Broker, start_receiver: ReceiverFactory
) -> None:
    early = await start_receiver()
    await broker.connect_receiver(early.url, topic="orders.>")
    await broker.publish_new("orders.eu", "already routed")
    await wait_for_texts(early, ["already routed"])

    late = await start_receiver()
    await broker.connect_receiver(late.url, topic="orders.*")
    await broker.publish_new("orders.us", "after both")
    await wait_for_texts(late, ["after both"])
    await asyncio.sleep(SETTLE_SECONDS)
    assert texts(late.received) == ["after both"]
    assert sorted(texts(early.received)) == ["after both", "already routed"]


async def test_bad_topics_and_patterns_are_400(broker: Broker) -> None:
    url = "http://127.0.0.1:9/hook"
    sender = await broker.connect_sender()
    calls: list[tuple[str, dict[str, object]]] = []
    for pattern in ["orders.>.eu", "orders.e*", "orders..eu", "", "x" * 201, "ord ers"]:
        calls.append(("/connect", {"ClientURL": url, "mode": "receive", "topic": pattern}))
        calls.append(("/v1/subscriptions", {"url": url, "topic": pattern}))
    for topic in ["orders.*", "orders.>", "a b", ""]:
        calls.append(("/send", {"id": sender, "body": "x", "topic": topic}))
        calls.append(("/connect", {"ClientURL": "", "mode": "send", "topic": topic}))
    accepted = []
    for path, body in calls:
        answer = await broker.call("POST", path, body)
        if answer.status != 400:
            accepted.append((path, body.get("topic"), answer.status))
        else:
            answer.problem(400, "topic")
    assert accepted == [], f"bad topics not refused with 400: {accepted}"
    # A pattern names topics to receive from; a message goes to exactly one topic.
    (await broker.publish("orders.*", "x")).problem(400)


async def test_a_native_subscription_routes_by_pattern_and_filter(
    broker: Broker, start_receiver: ReceiverFactory
) -> None:
    receiver = await start_receiver()
    made = await broker.subscribe(
        receiver.url, "shop.*", filter={"kind": ["sale", "refund"]}, max_concurrency=4
    )
    assert made["kind"] == "push" and made["topic"] == "shop.*" and made["paused"] is False
    assert made["filter"] == {"kind": ["sale", "refund"]}
    assert isinstance(made["secret"], str) and made["secret"]
    listed = await broker.ok("GET", f"/v1/subscriptions/{made['id']}")
    assert "secret" not in listed and listed["topic"] == "shop.*"

    published = [
        ("shop.eu", "sale eu", {"kind": "sale"}),
        ("shop.us", "refund us", {"kind": "refund"}),
        ("shop.us", "view us", {"kind": "view"}),  # filtered out
        ("shop.us", "no kind", {}),  # filtered out
        ("shop.eu.paris", "sale too deep", {"kind": "sale"}),  # `*` is one segment
        ("shop", "sale too shallow", {"kind": "sale"}),
    ]
    for topic, text, attributes in published:
        await broker.publish_new(topic, text, attributes=attributes)
    await wait_for_texts(receiver, ["sale eu", "refund us"])
    await asyncio.sleep(SETTLE_SECONDS)
    assert sorted(texts(receiver.received)) == ["refund us", "sale eu"]
    by_text = {record.text: record for record in receiver.received}
    assert by_text["sale eu"].body == {"body": "sale eu", "attributes": {"kind": "sale"}}
    assert by_text["sale eu"].headers["mq-topic"] == "shop.eu"
    assert by_text["refund us"].headers["mq-topic"] == "shop.us"
    assert by_text["refund us"].headers["mq-subscription-id"] == str(made["id"])


async def test_a_paused_subscription_gets_nothing_until_resumed(
    broker: Broker, start_receiver: ReceiverFactory
) -> None:
    receiver = await start_receiver()
    control = await start_receiver()  # shows when the broker has had every chance
    made = await broker.subscribe(receiver.url, "audit")
    await broker.subscribe(control.url, "audit")
    paused = await broker.ok("POST", f"/v1/subscriptions/{made['id']}/pause")
    assert paused["paused"] is True and paused["id"] == made["id"]

    held = [f"held {n}" for n in range(5)]
    for text in held:
        await broker.publish_new("audit", text)
    await wait_for_texts(control, held)
    await asyncio.sleep(SETTLE_SECONDS)
    assert receiver.attempts == [], "a paused subscription was delivered to"
    assert (await broker.ok("GET", f"/v1/subscriptions/{made['id']}"))["paused"] is True

    resumed = await broker.ok("POST", f"/v1/subscriptions/{made['id']}/resume")
    assert resumed["paused"] is False
    await broker.publish_new("audit", "after resume")
    await wait_for_texts(receiver, [*held, "after resume"])
    await asyncio.sleep(SETTLE_SECONDS)
    assert counts(receiver.received) == {text: 1 for text in [*held, "after resume"]}


async def test_seed_keys_of_the_new_fields_match_in_any_case(
    broker: Broker, start_receiver: ReceiverFactory
) -> None:
    receiver = await start_receiver()
    body = {"clienturl": receiver.url, "MODE": "receive", "Topic": "orders.*", "FILTER": {}}
    await broker.ok("POST", "/connect", body)
    sender = (await broker.ok("POST", "/connect", {"ClientURL": "", "Mode": "send"}))["id"]
    # Only the protocol's own keys are case-insensitive: attribute names are data.
    attributes = {"Region": "EU", "sku": "a", "SKU": "b"}
    message = {"ID": sender, "Body": "mixed case", "TOPIC": "orders.eu", "Attributes": attributes}
    await broker.ok("POST", "/send", message)
    await wait_for_texts(receiver, ["mixed case"])
    (record,) = receiver.received
    assert record.body == {"body": "mixed case", "attributes": attributes}
    assert record.headers["mq-topic"] == "orders.eu"


async def test_a_deleted_subscription_gets_nothing_more(
    broker: Broker, start_receiver: ReceiverFactory
) -> None:
    receiver = await start_receiver()
    control = await start_receiver()
    made = await broker.subscribe(receiver.url, "news.>")
    await broker.subscribe(control.url, "news.>")
    await broker.publish_new("news.sport", "before")
    await wait_for_texts(receiver, ["before"])
    assert (await broker.call("DELETE", f"/v1/subscriptions/{made['id']}")).status == 204
    (await broker.call("GET", f"/v1/subscriptions/{made['id']}")).problem(404)
    await broker.publish_new("news.sport", "after")
    await wait_for_texts(control, ["before", "after"])
    await asyncio.sleep(SETTLE_SECONDS)
    assert texts(receiver.attempts) == ["before"]
