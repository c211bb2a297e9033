"""Replay through the real server: seek re-delivers the retained messages after a time
to a push receiver and a pull consumer (and nothing retention swept), seek acks what
came before, start_at, and messages nobody took; on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import ReceiverFactory, ServerFactory
from tests.support.problems import check_problem
from tests.support.receiver import Receiver
from tests.support.routing import texts, wait_for_texts

RETENTION = 4.0  # seconds: short, to see a sweep


def moment(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


class Api:
    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, str, Any]:
        async with self.http.request(method, self.url + path, json=body) as response:
            text = await response.text()
            return response.status, response.content_type, json.loads(text) if text else None

    async def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        got, _, answer = await self.call(method, path, body)
        assert got == status, (method, path, got, answer)
        return answer

    async def publish(self, topic: str, *bodies: str, **fields: Any) -> list[str]:
        return [
            (
                await self.ok(
                    "POST", f"/v1/topics/{topic}/messages", {"body": b, **fields}, status=201
                )
            )["id"]
            for b in bodies
        ]

    async def subscribe(self, **fields: Any) -> int:
        return int((await self.ok("POST", "/v1/subscriptions", fields, status=201))["id"])

    async def seek(self, sid: int, when: str) -> dict[str, Any]:
        answer: dict[str, Any] = await self.ok(
            "POST", f"/v1/subscriptions/{sid}/seek", {"time": when}
        )
        return answer

    async def until_gone(self, message_id: str, timeout: float) -> None:
        """Wait until the message is forgotten (swept by retention)."""
        deadline = time.monotonic() + timeout
        while (await self.call("GET", f"/v1/messages/{message_id}"))[0] != 404:
            assert time.monotonic() < deadline, f"{message_id} was not swept in {timeout:g} s"
            await asyncio.sleep(0.2)

    async def until_delivered(self, message_ids: list[str], timeout: float = 15) -> None:
        """Wait until every delivery of these messages is settled as delivered: a receiver
        has the message a moment before the broker has written its answer down."""
        deadline = time.monotonic() + timeout
        for message_id in message_ids:
            while any(
                d["state"] != "delivered"
                for d in (await self.ok("GET", f"/v1/messages/{message_id}"))["deliveries"]
            ):
                assert time.monotonic() < deadline, f"{message_id} not delivered in {timeout:g} s"
                await asyncio.sleep(0.05)

    async def pull_all(self, sid: int, count: int) -> list[str]:
        """Pull and ack until `count` messages came; their bodies, in order."""
        bodies: list[str] = []
        async with asyncio.timeout(15):
            while len(bodies) < count:
                pulled = await self.ok("POST", f"/v1/subscriptions/{sid}/pull", {"wait_seconds": 5})
                ack_ids = [m["ack_id"] for m in pulled["messages"]]
                bodies += [m["body"] for m in pulled["messages"]]
                if ack_ids:
                    await self.ok("POST", f"/v1/subscriptions/{sid}/ack", {"ack_ids": ack_ids})
        return bodies


@pytest.fixture(params=["sqlite", "postgres"])
def store_args(request: pytest.FixtureRequest) -> list[str]:
    if request.param == "postgres":
        return ["--store", request.getfixturevalue("postgres_url")]
    return []


@pytest.mark.slow  # about 8 s on each store
async def test_seek_redelivers_exactly_the_retained_messages_after_the_time(
    start_server: ServerFactory,
    start_receiver: ReceiverFactory,
    http: aiohttp.ClientSession,
    store_args: list[str],
) -> None:
    server = start_server(*store_args, "--message-retention", f"{RETENTION:g}s")
    api = Api(http, server.url)
    receiver = await start_receiver()
    push = await api.subscribe(url=receiver.url, topic="replay")
    pull = await api.subscribe(kind="pull", topic="replay")

    # Delivered, then swept by retention: seek can no longer bring it back.
    (old,) = await api.publish("replay", "old")
    await wait_for_texts(receiver, ["old"])
    assert await api.pull_all(pull, 1) == ["old"]
    await api.until_gone(old, 4 * RETENTION)

    # The rest must not race the sweep (a slow machine took more than RETENTION over
    # it): the same store again, under a retention nothing here outlives.
    server.terminate()
    server.args = [*store_args, "--message-retention", "1h"]
    server.restart()
    async with aiohttp.ClientSession() as fresh:  # the old connections died with it
        await seek_back_over_the_retained(Api(fresh, server.url), receiver, push, pull)


async def seek_back_over_the_retained(api: Api, receiver: Receiver, push: int, pull: int) -> None:
    """Two batches, then seek both subscriptions between them and an hour back."""
    first = await api.publish("replay", "b1", "b2")
    await asyncio.sleep(0.2)
    between = moment(time.time())
    await asyncio.sleep(0.2)
    second = await api.publish("replay", "c1", "c2")
    await wait_for_texts(receiver, ["b1", "b2", "c1", "c2"])
    assert await api.pull_all(pull, 4) == ["b1", "b2", "c1", "c2"]
    await api.until_delivered(first + second)

    # To a time between the two batches: the second one again, and only it.
    for sid in (push, pull):
        sought = await api.seek(sid, between)
        assert (sought["due"], sought["acked"], sought["in_flight"]) == (2, 0, 0), sought
    await receiver.wait_for(7)
    assert await api.pull_all(pull, 2) == ["c1", "c2"]
    # Else a replayed delivery the broker has not yet settled counts as in flight below.
    await api.until_delivered(second)

    # An hour back: every retained message, not the one retention swept.
    hour_ago = moment(time.time() - 3600)
    for sid in (push, pull):
        assert (await api.seek(sid, hour_ago))["due"] == 4
    await receiver.wait_for(11)
    assert await api.pull_all(pull, 4) == ["b1", "b2", "c1", "c2"]
    await asyncio.sleep(0.5)
    assert Counter(texts(receiver.received)) == {"old": 1, "b1": 2, "b2": 2, "c1": 3, "c2": 3}
    replayed = [r for r in receiver.received if r.text == "c1"]
    assert [r.headers.get("mq-attempt") for r in replayed] == ["1", "1", "1"]
    assert (await api.ok("POST", f"/v1/subscriptions/{pull}/pull", {}))["messages"] == []


async def test_seek_acks_what_came_before_so_its_retries_stop(
    start_server: ServerFactory, start_receiver: ReceiverFactory, http: aiohttp.ClientSession
) -> None:
    server = start_server("--retry-base", "0.05", "--retry-max", "0.1", "--max-attempts", "100")

    async def refuse(request: web.Request, number: int) -> web.StreamResponse:
        return web.Response(status=503)

    receiver = await start_receiver(refuse)
    api = Api(http, server.url)
    sid = await api.subscribe(url=receiver.url, topic="stuck")
    (stuck,) = await api.publish("stuck", "refused again and again")
    await receiver.wait_for_attempts(3)
    sought = await api.seek(sid, moment(time.time() + 60))  # the future: everything
    assert sought["due"] == 0 and sought["acked"] + sought["in_flight"] == 1, sought
    await asyncio.sleep(0.5)  # an attempt in flight at the seek may still end
    tried = len(receiver.attempts)
    await asyncio.sleep(1.0)
    assert len(receiver.attempts) == tried, "attempts went on after the seek acked it"
    message = await api.ok("GET", f"/v1/messages/{stuck}")
    assert [d["state"] for d in message["deliveries"]] == ["delivered"]
    assert await api.ok("GET", "/v1/dead-letters") == {"dead_letters": [], "next_cursor": None}


async def test_start_at_new_earliest_and_a_time(
    start_server: ServerFactory, start_receiver: ReceiverFactory, http: aiohttp.ClientSession
) -> None:
    server = start_server()
    api = Api(http, server.url)
    await api.publish("late", "first")
    await asyncio.sleep(0.2)
    between = moment(time.time())
    await asyncio.sleep(0.2)
    await api.publish("late", "second")
    new, earliest, since = [await start_receiver() for _ in range(3)]
    await api.subscribe(url=new.url, topic="late")
    await api.subscribe(url=earliest.url, topic="late", start_at="earliest")
    await api.subscribe(url=since.url, topic="late", start_at=between)
    await api.publish("late", "third")
    await wait_for_texts(earliest, ["first", "second", "third"])
    await wait_for_texts(since, ["second", "third"])
    await wait_for_texts(new, ["third"])
    await asyncio.sleep(0.3)
    # Without an ordering key the replayed messages go out side by side, so only which
    # messages arrive (each once) is promised, not the order they arrive in.
    assert sorted(texts(earliest.received)) == ["first", "second", "third"]
    assert sorted(texts(since.received)) == ["second", "third"]
    assert texts(new.received) == ["third"]
    got, content_type, answer = await api.call(
        "POST", "/v1/subscriptions", {"url": new.url, "topic": "late", "start_at": "yesterday"}
    )
    problem = check_problem(got, content_type, json.dumps(answer).encode(), 400, None)
    assert problem["field"] == "start_at" and "'yesterday'" in problem["detail"], problem


async def test_a_message_every_subscription_filters_out_is_not_backlog(
    start_server: ServerFactory, start_receiver: ReceiverFactory, http: aiohttp.ClientSession
) -> None:
    server = start_server()
    api = Api(http, server.url)
    eu = await start_receiver()
    await api.subscribe(url=eu.url, topic="regional", filter={"region": "eu"})
    await api.publish("regional", "for the us", attributes={"region": "us"})
    topic = await api.ok("GET", "/v1/topics/regional")
    assert (topic["published"], topic["backlog"]) == (1, 0), topic
    later = await start_receiver()
    await api.subscribe(url=later.url, topic="regional")
    await api.publish("regional", "after", attributes={"region": "us"})
    await wait_for_texts(later, ["after"])
    await asyncio.sleep(0.3)
    assert texts(later.received) == ["after"]
    assert eu.received == []
    status = await api.ok("GET", "/v1/status")
    assert status["queue_length"] == 0, status
