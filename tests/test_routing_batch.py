"""Batch publish end to end: POST /v1/topics/{t}/messages with {"messages": [...]}
answers one result per message in request order, delivers the good ones and none of
the bad ones, refuses an empty or oversized batch whole, and deduplicates keys inside
a batch as it does across publishes."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from tests.conftest import ReceiverFactory, ServerFactory
from tests.support.load import FAST_RETRIES
from tests.support.receiver import Receiver
from tests.support.routing import SETTLE_SECONDS, Broker, counts, wait_for_texts


@pytest.fixture
def broker(start_server: ServerFactory, http: aiohttp.ClientSession) -> Broker:
    return Broker(http, start_server("--workers", "8", *FAST_RETRIES).url)


async def subscribed(broker: Broker, start_receiver: ReceiverFactory, topic: str) -> Receiver:
    receiver = await start_receiver()
    await broker.connect_receiver(receiver.url, topic=topic)
    return receiver


def check_error(result: dict[str, Any], field: str | None = None) -> dict[str, Any]:
    assert set(result) == {"error"}, result
    error: dict[str, Any] = result["error"]
    for member in ("type", "title", "detail"):
        assert isinstance(error.get(member), str) and error[member], (member, error)
    assert isinstance(error.get("status"), int) and 400 <= error["status"] < 500, error
    if field is not None:
        assert error.get("field") == field or field in error["detail"], error
    return error


async def test_one_bad_message_in_a_batch_of_five(
    broker: Broker, start_receiver: ReceiverFactory
) -> None:
    receiver = await subscribed(broker, start_receiver, "bulk")
    messages: list[dict[str, Any]] = [{"body": f"good {n}"} for n in range(5)]
    messages[2] = {"body": "bad", "attributes": {"n": 5}}  # a value that is not a string
    data = await broker.ok("POST", "/v1/topics/bulk/messages", {"messages": messages})
    assert (data["accepted"], data["rejected"]) == (4, 1), data
    results = data["results"]
    assert len(results) == 5
    check_error(results[2], "attributes")
    good = {n: results[n] for n in (0, 1, 3, 4)}
    for result in good.values():
        assert set(result) == {"id", "duplicate"} and result["duplicate"] is False, result
    assert len({result["id"] for result in good.values()}) == 4

    await wait_for_texts(receiver, [f"good {n}" for n in good])
    await asyncio.sleep(SETTLE_SECONDS)
    assert counts(receiver.received) == {f"good {n}": 1 for n in good}
    for record in receiver.received:  # each id answered is the id delivered, in order
        assert record.message_id == good[int(str(record.text).split()[1])]["id"]


async def test_each_bad_message_gets_its_own_error_in_order(
    broker: Broker, start_receiver: ReceiverFactory
) -> None:
    receiver = await subscribed(broker, start_receiver, "bulk")
    bad: list[tuple[Any, str | None]] = [
        ({"attributes": {"a": "b"}}, "body"),
        ({"body": 5}, "body"),
        ({"body": "x", "delay_seconds": 1, "deliver_at": "2030-01-01T00:00:00Z"}, None),
        ({"body": "x", "ordering_key": "k" * 201}, "ordering_key"),
        ({"body": "x", "deliver_at": "soon"}, "deliver_at"),
        ("just text", None),
    ]
    messages: list[Any] = []
    for number, (message, _) in enumerate(bad):
        messages += [{"body": f"good {number}"}, message]
    data = await broker.ok("POST", "/v1/topics/bulk/messages", {"messages": messages})
    assert (data["accepted"], data["rejected"]) == (len(bad), len(bad)), data
    results = data["results"]
    assert len(results) == 2 * len(bad)
    for number, (message, field) in enumerate(bad):
        assert set(results[2 * number]) == {"id", "duplicate"}, results[2 * number]
        try:
            check_error(results[2 * number + 1], field)
        except AssertionError as error:
            raise AssertionError(f"for {message!r}: {error}") from None
    wanted = [f"good {n}" for n in range(len(bad))]
    await wait_for_texts(receiver, wanted)
    await asyncio.sleep(SETTLE_SECONDS)
    assert counts(receiver.received) == {text: 1 for text in wanted}


async def test_an_empty_or_oversized_batch_is_refused_whole(
    broker: Broker, start_receiver: ReceiverFactory
) -> None:
    receiver = await subscribed(broker, start_receiver, "bulk")
    too_many = {"messages": [{"body": f"m {n}"} for n in range(1001)]}
    answer = await broker.call("POST", "/v1/topics/bulk/messages", too_many)
    assert "1000" in answer.problem(400)["detail"]
    shapes: list[dict[str, Any]] = [{"messages": []}, {"messages": "m"}, {"messages": None}]
    for body in shapes:
        answer = await broker.call("POST", "/v1/topics/bulk/messages", body)
        answer.problem(400, "messages")
    await broker.publish_new("bulk", "fence")
    await wait_for_texts(receiver, ["fence"])
    await asyncio.sleep(SETTLE_SECONDS)
    assert [record.text for record in receiver.attempts] == ["fence"]
    topic = await broker.ok("GET", "/v1/topics/bulk")
    assert topic["published"] == 1, topic


async def test_a_repeated_idempotency_key_inside_a_batch(
    broker: Broker, start_receiver: ReceiverFactory
) -> None:
    receiver = await subscribed(broker, start_receiver, "bulk")
    earlier = await broker.publish_new("bulk", "earlier", idempotency_key="old")
    messages = [
        {"body": "a", "idempotency_key": "k"},
        {"body": "b", "idempotency_key": "k"},
        {"body": "c"},
        {"body": "d", "idempotency_key": "old"},
        {"body": "e", "idempotency_key": "other"},
    ]
    data = await broker.ok("POST", "/v1/topics/bulk/messages", {"messages": messages})
    results = data["results"]
    assert data["rejected"] == 0, data
    assert results[0]["duplicate"] is False
    assert results[1] == {"id": results[0]["id"], "duplicate": True}
    assert results[2]["duplicate"] is False
    assert results[3] == {"id": earlier, "duplicate": True}
    assert results[4]["duplicate"] is False
    assert len({results[n]["id"] for n in (0, 2, 4)} | {earlier}) == 4
    await wait_for_texts(receiver, ["earlier", "a", "c", "e"])
    await asyncio.sleep(SETTLE_SECONDS)
    assert counts(receiver.received) == {"earlier": 1, "a": 1, "c": 1, "e": 1}


async def test_a_full_batch_is_delivered_in_order_per_key(
    broker: Broker, start_receiver: ReceiverFactory
) -> None:
    receiver = await subscribed(broker, start_receiver, "bulk")
    messages = [{"body": f"m {n}", "ordering_key": f"k{n % 4}"} for n in range(1000)]
    data = await broker.ok("POST", "/v1/topics/bulk/messages", {"messages": messages})
    assert (data["accepted"], data["rejected"]) == (1000, 0)
    ids = [result["id"] for result in data["results"]]
    assert len(set(ids)) == 1000
    await wait_for_texts(receiver, [message["body"] for message in messages], timeout=30)
    assert len(receiver.received) == 1000, "some messages were delivered twice"
    for key in range(4):
        got = [r.message_id for r in receiver.received if r.body["ordering_key"] == f"k{key}"]
        assert got == ids[key::4], f"key k{key} arrived out of batch order"
