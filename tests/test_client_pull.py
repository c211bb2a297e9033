"""The clients' pull calls against a real server: a long poll that outlasts the
client's timeout, ack, nack and extend with their per-id answers, and AsyncClient."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

import mqpy
from mqpy.client import NotFound
from tests.conftest import ServerFactory
from tests.support.server import ServerProcess


@pytest.fixture
def broker(start_server: ServerFactory) -> ServerProcess:
    return start_server(env={"MQPY_ADMIN_KEY": ""})


def test_a_long_poll_may_outlast_the_clients_timeout(broker: ServerProcess) -> None:
    with mqpy.Client(broker.url, timeout=1) as client:
        subscription = client.create_pull_subscription("slow", ack_deadline_seconds=1)
        assert client.pull(subscription, wait_seconds=2) == []


def test_ack_nack_and_extend_answer_per_id(broker: ServerProcess) -> None:
    with mqpy.Client(broker.url) as client:
        subscription = client.create_pull_subscription("jobs", ack_deadline_seconds=1)
        client.publish("jobs", "first", attributes={"k": "v"})
        client.publish("jobs", "second")
        first, second = client.pull(subscription, max_messages=2)
        assert (first.body, first.attributes, first.attempt) == ("first", {"k": "v"}, 1)
        assert client.extend(subscription, [first], 60).done == [first.ack_id]
        nacked = client.nack(subscription, [second.ack_id], delay_seconds=0)
        assert (nacked.done, nacked.expired) == ([second.ack_id], [])
        (again,) = client.pull(subscription, wait_seconds=5)
        assert (again.body, again.attempt) == ("second", 2)
        acked = client.ack(subscription, [first, again, second])
        assert (acked.done, acked.expired) == ([first.ack_id, again.ack_id], [second.ack_id])
        client.delete_subscription(subscription)
        with pytest.raises(NotFound):
            client.pull(subscription)


async def test_the_async_client_pulls_what_is_published_while_it_waits(
    broker: ServerProcess,
) -> None:
    async with mqpy.AsyncClient(broker.url, timeout=1) as client:
        subscription = await client.create_pull_subscription("live", group="g")
        waiting = asyncio.create_task(client.pull(subscription, wait_seconds=20))
        await asyncio.sleep(0.3)
        published = await client.publish("live", "now")
        async with asyncio.timeout(10):
            (message,) = await waiting
        assert message.message_id == published.id
        assert (await client.ack(subscription, [message])).done == [message.ack_id]
        assert await client.pull(subscription, wait_seconds=1.5) == []


async def test_the_async_client_streams_messages_and_refuses_a_push_subscription(
    broker: ServerProcess,
) -> None:
    async with mqpy.AsyncClient(broker.url) as client:
        subscription = await client.create_pull_subscription("feed", ack_deadline_seconds=60)
        await client.publish_batch("feed", ["e1", "e2"])
        got = []
        async with asyncio.timeout(10), contextlib.aclosing(client.stream(subscription)) as events:
            async for message in events:
                got.append(message)
                if len(got) == 2:
                    break
        assert [(m.body, m.attempt) for m in got] == [("e1", 1), ("e2", 1)]
        assert (await client.ack(subscription, got)).done == [m.ack_id for m in got]
        with pytest.raises(NotFound):
            async for _ in client.stream(123):
                pass
