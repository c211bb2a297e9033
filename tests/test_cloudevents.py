"""CloudEvents deliveries through the real server: push subscriptions with format
cloudevents-binary or cloudevents-structured, parsed by the CloudEvents SDK and their
signatures checked by the Standard Webhooks reference package; the default mq format
unchanged; PATCH changing the format; bad formats refused."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from standardwebhooks.webhooks import Webhook

from tests.conftest import ReceiverFactory
from tests.support.server import ServerProcess
from tests.test_pull import Api
from tests.test_signing_e2e import ReceivedRequest, Recorder

BINARY = "cloudevents-binary"
STRUCTURED = "cloudevents-structured"
REQUIRED = {"specversion", "id", "source", "type", "subject", "time"}


async def subscribe(api: Api, url: str, topic: str, **fields: Any) -> tuple[int, str]:
    created = await api.ok(
        "POST", "/v1/subscriptions", {"url": url, "topic": topic, **fields}, status=201
    )
    return int(created["id"]), str(created["secret"])


def parsed(delivery: ReceivedRequest, secret: str) -> BaseCloudEvent:
    """The event as the SDK reads it, once the signature checked out."""
    Webhook(secret).verify(delivery.body, delivery.headers, json_parse=False)
    return from_http_event(HTTPMessage(headers=delivery.headers, body=delivery.body))


@pytest.fixture
def api(http: aiohttp.ClientSession, server: ServerProcess) -> Api:
    return Api(http, server.url)


@pytest.mark.parametrize("mode", [BINARY, STRUCTURED])
async def test_a_json_message_arrives_as_a_cloudevent_with_its_defaults(
    api: Api, start_receiver: ReceiverFactory, mode: str
) -> None:
    recorder = Recorder()
    receiver = await start_receiver(recorder)
    _, secret = await subscribe(api, receiver.url, "orders.eu", format=mode)
    before = datetime.now(UTC).replace(microsecond=0)
    [message_id] = await api.publish(
        "orders.eu", '{"order": 7, "note": "ünïcode"}', attributes={"region": "eu"}
    )
    await receiver.wait_for(1)
    [delivery] = recorder.deliveries
    event = parsed(delivery, secret)
    assert event.get_id() == message_id
    assert event.get_specversion() == "1.0"
    assert event.get_source() == "/mq-py/topics/orders.eu"
    assert event.get_type() == "mq-py.message"
    assert event.get_subject() == "orders.eu"
    assert event.get_datacontenttype() == "application/json"
    sent = event.get_time()
    assert sent is not None and before <= sent <= datetime.now(UTC)
    assert event.get_data() == {"order": 7, "note": "ünïcode"}
    assert event.get_extension("region") == "eu"
    expected_type = "application/json" if mode == BINARY else "application/cloudevents+json"
    assert delivery.headers["Content-Type"].startswith(expected_type)
    assert delivery.headers["webhook-id"] == message_id


@pytest.mark.parametrize("mode", [BINARY, STRUCTURED])
async def test_a_text_message_keeps_the_publishers_source_type_and_ordering_key(
    api: Api, start_receiver: ReceiverFactory, mode: str
) -> None:
    recorder = Recorder()
    receiver = await start_receiver(recorder)
    _, secret = await subscribe(api, receiver.url, "billing", format=mode)
    attributes = {
        "ce-source": "https://shop.example/checkout?x=1 2",  # a space and '?' to encode
        "ce-type": "com.example.order.paid",
        "Not-An-Extension": "left out",
    }
    await api.publish("billing", "paid 42 €", attributes=attributes, ordering_key="cust-9")
    await receiver.wait_for(1)
    [delivery] = recorder.deliveries
    event = parsed(delivery, secret)
    assert event.get_source() == "https://shop.example/checkout?x=1 2"
    assert event.get_type() == "com.example.order.paid"
    assert event.get_datacontenttype() == "text/plain; charset=utf-8"
    data = event.get_data()
    assert (data.decode() if isinstance(data, bytes) else data) == "paid 42 €"
    assert event.get_extension("partitionkey") == "cust-9"
    assert set(event.get_attributes()) == {*REQUIRED, "datacontenttype", "partitionkey"}


async def test_the_default_format_stays_the_seeds_body(
    api: Api, start_receiver: ReceiverFactory
) -> None:
    recorder = Recorder()
    receiver = await start_receiver(recorder)
    subscription, secret = await subscribe(api, receiver.url, "plain")
    shown = await api.ok("GET", f"/v1/subscriptions/{subscription}")
    assert shown["format"] == "mq"
    await api.publish("plain", "hello")
    await receiver.wait_for(1)
    [delivery] = recorder.deliveries
    assert Webhook(secret).verify(delivery.body, delivery.headers) == {"body": "hello"}
    assert not any(name.lower().startswith("ce-") for name in delivery.headers)


async def test_patch_changes_the_format_of_later_deliveries(
    api: Api, start_receiver: ReceiverFactory
) -> None:
    recorder = Recorder()
    receiver = await start_receiver(recorder)
    subscription, secret = await subscribe(api, receiver.url, "switch", format=BINARY)
    await api.publish("switch", "first")
    await receiver.wait_for(1)
    changed = await api.ok("PATCH", f"/v1/subscriptions/{subscription}", {"format": STRUCTURED})
    assert changed["format"] == STRUCTURED
    listed = await api.ok("GET", "/v1/subscriptions")
    assert [s["format"] for s in listed["subscriptions"] if s["id"] == subscription] == [STRUCTURED]
    await api.publish("switch", "second")
    await receiver.wait_for(2)
    first, second = recorder.deliveries
    assert "ce-id" in first.headers and "ce-id" not in second.headers
    assert second.headers["Content-Type"].startswith("application/cloudevents+json")
    assert parsed(second, secret).get_data() == "second"


async def test_a_wrong_format_is_refused_naming_the_field(
    api: Api, start_receiver: ReceiverFactory
) -> None:
    receiver = await start_receiver()
    problem = await api.problem(
        "POST", "/v1/subscriptions", {"url": receiver.url, "format": "cloudevents"}, 400
    )
    assert problem["detail"] == (
        "`format` must be one of 'mq', 'cloudevents-binary' or 'cloudevents-structured', "
        "not the string 'cloudevents'"
    )
    pull = {"kind": "pull", "topic": "t", "format": BINARY}
    problem = await api.problem("POST", "/v1/subscriptions", pull, 400)
    assert "format" in problem["detail"]
    pulled = await api.pull_subscription("t")
    await api.problem("PATCH", f"/v1/subscriptions/{pulled}", {"format": BINARY}, 409)
