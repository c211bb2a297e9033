"""Pull subscriptions through the real server: a long poll that a publish wakes, acks
that settle and ack ids that expire, redelivery after the ack deadline with the attempt
counting up, dead letters after max_attempts, nack and extend, groups shared by pull
consumers, Server-Sent Events with and without ack=auto, and bad input answered with
problem+json."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import aiohttp
import pytest

from tests.conftest import ServerFactory
from tests.support.problems import check_problem
from tests.support.server import ServerProcess

# Short deadlines keep redelivery tests to seconds; every wait below is bounded.
DEADLINE = 1


class Api:
    """The native API as a pull consumer uses it."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, str, Any]:
        async with self.http.request(method, self.url + path, json=body) as response:
            text = await response.text()
            return response.status, response.content_type, json.loads(text) if text else None

    async def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        got, _, answer = await self.call(method, path, body)
        assert got == status, (got, answer)
        return answer

    async def problem(self, method: str, path: str, body: Any, status: int) -> Any:
        got, content_type, answer = await self.call(method, path, body)
        return check_problem(got, content_type, json.dumps(answer).encode(), status, None)

    async def pull_subscription(self, topic: str, **fields: Any) -> int:
        body = {"kind": "pull", "topic": topic, "ack_deadline_seconds": DEADLINE, **fields}
        created = await self.ok("POST", "/v1/subscriptions", body, status=201)
        return int(created["id"])

    async def publish(self, topic: str, *bodies: str, **fields: Any) -> list[str]:
        ids = []
        for body in bodies:
            answer = await self.ok(
                "POST", f"/v1/topics/{topic}/messages", {"body": body, **fields}, status=201
            )
            ids.append(answer["id"])
        return ids

    async def pull(self, sid: int, max_messages: int = 100, wait: float = 0) -> list[Any]:
        body = {"max_messages": max_messages, "wait_seconds": wait}
        answer = await self.ok("POST", f"/v1/subscriptions/{sid}/pull", body)
        return list(answer["messages"])

    async def settle(self, sid: int, verb: str, ack_ids: list[str], **fields: Any) -> Any:
        return await self.ok(
            "POST", f"/v1/subscriptions/{sid}/{verb}", {"ack_ids": ack_ids, **fields}
        )

    async def pull_until(self, sid: int, count: int, timeout: float = 15.0) -> list[Any]:
        """Long-poll until `count` messages came (acking none of them)."""
        got: list[Any] = []
        async with asyncio.timeout(timeout):
            while len(got) < count:
                got += await self.pull(sid, wait=5)
        return got


@pytest.fixture
def broker(start_server: ServerFactory) -> ServerProcess:
    return start_server("--max-attempts", "3", env={"MQPY_ADMIN_KEY": ""})


@pytest.fixture
def api(http: aiohttp.ClientSession, broker: ServerProcess) -> Api:
    return Api(http, broker.url)


def bodies(messages: list[Any]) -> list[str]:
    return [m["body"] for m in messages]


async def test_a_pull_subscription_is_listed_with_its_kind_and_gets_no_push(api: Api) -> None:
    sid = await api.pull_subscription("orders", group="g", filter={"region": "eu"})
    shown = await api.ok("GET", f"/v1/subscriptions/{sid}")
    assert (shown["kind"], shown["url"], shown["ack_deadline_seconds"]) == ("pull", None, DEADLINE)
    assert (shown["group"], shown["filter"]) == ("g", {"region": "eu"})
    listed = await api.ok("GET", "/v1/subscriptions")
    assert [s["kind"] for s in listed["subscriptions"] if s["id"] == sid] == ["pull"]
    feed = await api.ok("GET", "/v1/status")
    assert [r["kind"] for r in feed["receivers"] if r["id"] == sid] == ["pull"]
    default = await api.ok("POST", "/v1/subscriptions", {"kind": "pull"}, status=201)
    assert default["ack_deadline_seconds"] == 30 and default["topic"] == "default"


async def test_a_long_poll_answers_when_a_message_is_published(api: Api) -> None:
    sid = await api.pull_subscription("wake")
    waiting = asyncio.create_task(api.pull(sid, wait=20))
    await asyncio.sleep(0.3)
    assert not waiting.done(), "a long poll with nothing due waits"
    (message_id,) = await api.publish("wake", "hello", attributes={"k": "v"}, ordering_key="o1")
    async with asyncio.timeout(10):
        (message,) = await waiting
    assert message["message_id"] == message_id
    assert (message["topic"], message["body"], message["attributes"]) == (
        "wake",
        "hello",
        {"k": "v"},
    )
    assert (message["ordering_key"], message["attempt"]) == ("o1", 1)
    assert message["published_at"].endswith("Z") and message["ack_id"]


async def test_an_empty_pull_answers_after_its_wait(api: Api) -> None:
    sid = await api.pull_subscription("quiet")
    assert await api.pull(sid, wait=0) == []
    assert await api.pull(sid, wait=0.5) == []


async def test_acked_messages_never_come_again_and_unacked_ones_do_with_the_next_attempt(
    api: Api,
) -> None:
    sid = await api.pull_subscription("work")
    await api.publish("work", "a", "b", "c")
    first = await api.pull(sid, max_messages=2)
    assert bodies(first) == ["a", "b"]
    rest = await api.pull(sid)
    assert bodies(rest) == ["c"]
    acked = await api.settle(sid, "ack", [m["ack_id"] for m in first])
    assert acked == {"acked": [m["ack_id"] for m in first], "expired": []}
    # "c" was not acked: after its deadline it comes again, as attempt 2.
    (again,) = await api.pull_until(sid, 1)
    assert (again["body"], again["attempt"]) == ("c", 2)
    assert again["ack_id"] != rest[0]["ack_id"]
    # The old ack id is bound to the old lease: it no longer acks the message.
    stale = await api.settle(sid, "ack", [rest[0]["ack_id"], again["ack_id"]])
    assert stale == {"acked": [again["ack_id"]], "expired": [rest[0]["ack_id"]]}
    assert await api.pull(sid, wait=DEADLINE + 1.5) == []


async def test_a_message_never_acked_goes_to_dead_letters_after_max_attempts(api: Api) -> None:
    sid = await api.pull_subscription("doomed", retry_policy={"max_attempts": 2})
    (message_id,) = await api.publish("doomed", "never acked")
    got = await api.pull_until(sid, 2)
    assert [m["attempt"] for m in got] == [1, 2]
    # Its third pull finds it spent: a dead letter, not a third attempt. Every pull until
    # the second deadline has passed and it is listed, and one after, comes back empty.
    async with asyncio.timeout(DEADLINE + 10):
        while not (letters := await api.ok("GET", f"/v1/subscriptions/{sid}/dead-letters"))[
            "dead_letters"
        ]:
            assert await api.pull(sid, wait=0.2) == []
    assert await api.pull(sid, wait=0.2) == []
    (letter,) = letters["dead_letters"]
    assert letter["message_id"] == message_id
    assert "ack deadline" in letter["last_error"]


async def test_a_nack_makes_it_due_again_and_the_last_attempts_nack_dead_letters_it(
    api: Api,
) -> None:
    sid = await api.pull_subscription("nacked", retry_policy={"max_attempts": 2})
    await api.publish("nacked", "x")
    (first,) = await api.pull(sid)
    nacked = await api.settle(sid, "nack", [first["ack_id"]], delay_seconds=0)
    assert nacked == {"nacked": [first["ack_id"]], "expired": []}
    (second,) = await api.pull(sid, wait=5)
    assert (second["body"], second["attempt"]) == ("x", 2)
    await api.settle(sid, "nack", [second["ack_id"]], delay_seconds=0)
    assert await api.pull(sid, wait=0.5) == []
    letters = await api.ok("GET", f"/v1/subscriptions/{sid}/dead-letters")
    assert [d["last_error"] for d in letters["dead_letters"]] == ["nacked by the consumer"]


async def test_extend_keeps_a_message_leased_past_its_deadline(api: Api) -> None:
    sid = await api.pull_subscription("slow")
    await api.publish("slow", "long job")
    (message,) = await api.pull(sid)
    extended = await api.settle(sid, "extend", [message["ack_id"]], seconds=60)
    assert extended == {"extended": [message["ack_id"]], "expired": []}
    assert await api.pull(sid, wait=DEADLINE + 1.5) == []
    acked = await api.settle(sid, "ack", [message["ack_id"]])
    assert acked["acked"] == [message["ack_id"]]


async def test_pull_members_of_a_group_share_the_messages_and_filters_hold(api: Api) -> None:
    first = await api.pull_subscription("jobs", group="workers", filter={"kind": "job"})
    second = await api.pull_subscription("jobs", group="workers", filter={"kind": "job"})
    await api.publish("jobs", *[f"j{n}" for n in range(6)], attributes={"kind": "job"})
    await api.publish("jobs", "not a job", attributes={"kind": "other"})
    taken = await api.pull(first, max_messages=4)
    rest = await api.pull(second)
    assert sorted(bodies(taken) + bodies(rest)) == [f"j{n}" for n in range(6)]
    assert len(taken) == 4 and len(rest) == 2


async def test_an_ordering_key_goes_out_one_message_at_a_time(api: Api) -> None:
    sid = await api.pull_subscription("ordered")
    await api.publish("ordered", "k1", "k2", ordering_key="key")
    (head,) = await api.pull(sid)
    assert head["body"] == "k1"
    assert await api.pull(sid) == [], "k2 waits until k1 is settled"
    await api.settle(sid, "ack", [head["ack_id"]])
    assert bodies(await api.pull(sid, wait=5)) == ["k2"]


async def read_events(response: aiohttp.ClientResponse, count: int) -> list[dict[str, str]]:
    """The next `count` events of a Server-Sent Events stream (comments skipped)."""
    events: list[dict[str, str]] = []
    event: dict[str, str] = {}
    async with asyncio.timeout(15):
        while len(events) < count:
            line = (await response.content.readline()).decode().rstrip("\n")
            if not line:
                if event:
                    events.append(event)
                event = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                event[name] = value
    return events


async def test_events_stream_messages_the_client_acks_and_a_dropped_stream_redelivers(
    api: Api,
) -> None:
    sid = await api.pull_subscription("stream")
    async with api.http.get(f"{api.url}/v1/subscriptions/{sid}/events") as response:
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        await api.publish("stream", "s1", "s2")
        events = await read_events(response, 2)
    assert [e["event"] for e in events] == ["message", "message"]
    data = [json.loads(e["data"]) for e in events]
    assert [d["body"] for d in data] == ["s1", "s2"]
    assert [e["id"] for e in events] == [d["ack_id"] for d in data]
    await api.settle(sid, "ack", [events[0]["id"]])
    # The stream dropped with s2 unacked: it comes again after its deadline.
    async with api.http.get(f"{api.url}/v1/subscriptions/{sid}/events") as response:
        (again,) = await read_events(response, 1)
    assert (json.loads(again["data"])["body"], json.loads(again["data"])["attempt"]) == ("s2", 2)


async def test_events_with_ack_auto_ack_each_message_once_written(api: Api) -> None:
    sid = await api.pull_subscription("tail")
    await api.publish("tail", "t1", "t2")
    url = f"{api.url}/v1/subscriptions/{sid}/events?ack=auto"
    async with api.http.get(url) as response:
        events = await read_events(response, 2)
    assert [json.loads(e["data"])["body"] for e in events] == ["t1", "t2"]
    assert await api.pull(sid, wait=DEADLINE + 1.5) == []
    expired = await api.settle(sid, "ack", [e["id"] for e in events])
    assert expired["acked"] == []


async def test_bad_pull_requests_answer_problems(api: Api, broker: ServerProcess) -> None:
    sid = await api.pull_subscription("bad")
    push = await api.ok(
        "POST", "/v1/subscriptions", {"url": "http://127.0.0.1:9/h", "topic": "bad"}, status=201
    )
    base = f"/v1/subscriptions/{sid}"
    bad_pulls: list[Any] = [
        {"max_messages": 0},
        {"max_messages": 1001},
        {"max_messages": "ten"},
        {"wait_seconds": 31},
        {"wait_seconds": -1},
        {"max": 1},
        [],
    ]
    for body in bad_pulls:
        await api.problem("POST", f"{base}/pull", body, 400)
    bad_settles: list[tuple[str, Any]] = [
        ("ack", {"ack_ids": []}),
        ("ack", {"ack_ids": ["not-an-ack-id"]}),
        ("ack", {"ack_ids": "1-00"}),
        ("nack", {"ack_ids": ["1-" + "0" * 24], "delay_seconds": -1}),
        ("extend", {"ack_ids": ["1-" + "0" * 24], "seconds": 0}),
        ("extend", {"ack_ids": ["1-" + "0" * 24], "seconds": 601}),
        ("extend", {"ack_ids": ["1-" + "0" * 24]}),
    ]
    for verb, body in bad_settles:
        await api.problem("POST", f"{base}/{verb}", body, 400)
    await api.problem("POST", "/v1/subscriptions/12345/pull", {}, 404)
    await api.problem("POST", "/v1/subscriptions/12345/ack", {"ack_ids": ["1-" + "0" * 24]}, 404)
    await api.problem("GET", "/v1/subscriptions/12345/events", None, 404)
    await api.problem("POST", f"/v1/subscriptions/{push['id']}/pull", {}, 409)
    await api.problem("GET", f"/v1/subscriptions/{push['id']}/events", None, 409)
    await api.problem("GET", f"{base}/events?ack=sometimes", None, 400)
    bad_subscriptions: list[Any] = [
        {"kind": "pull", "url": "http://127.0.0.1:9/h"},
        {"kind": "pull", "max_concurrency": 2},
        {"kind": "pull", "ack_deadline_seconds": 0},
        {"kind": "pull", "ack_deadline_seconds": 601},
        {"kind": "push"},
        {"kind": "push", "url": "http://127.0.0.1:9/h", "ack_deadline_seconds": 10},
        {"kind": "poll"},
    ]
    for body in bad_subscriptions:
        await api.problem("POST", "/v1/subscriptions", body, 400)
    for change in ({"url": "http://127.0.0.1:9/h"}, {"max_concurrency": 2}, {"max_per_second": 5}):
        await api.problem("PATCH", base, change, 409)
    changed = await api.ok("PATCH", base, {"retry_policy": {"max_attempts": 4}})
    assert (changed["kind"], changed["retry_policy"]["max_attempts"]) == ("pull", 4)
    unknown = await api.settle(sid, "ack", ["1-" + "0" * 24])
    assert unknown == {"acked": [], "expired": ["1-" + "0" * 24]}


async def test_a_pull_through_one_node_takes_what_another_node_accepted(
    start_server: ServerFactory, http: aiohttp.ClientSession, postgres_url: str
) -> None:
    env = {"MQPY_ADMIN_KEY": ""}
    node_a, node_b = (start_server("--store", postgres_url, env=env) for _ in range(2))
    through_a, through_b = Api(http, node_a.url), Api(http, node_b.url)
    sid = await through_b.pull_subscription("shared")
    waiting = asyncio.create_task(through_a.pull(sid, wait=20))
    await asyncio.sleep(0.3)
    (message_id,) = await through_b.publish("shared", "from b")
    async with asyncio.timeout(10):
        (message,) = await waiting
    assert (message["message_id"], message["body"]) == (message_id, "from b")
    # Acked through the other node: the ack id carries the lease, not node state.
    acked = await through_b.settle(sid, "ack", [message["ack_id"]])
    assert acked["acked"] == [message["ack_id"]]
    assert await through_a.pull(sid, wait=DEADLINE + 1.5) == []


@pytest.mark.slow  # about 11 s
async def test_ten_thousand_messages_pulled_500_at_a_time_none_lost_none_twice(
    api: Api,
) -> None:
    deadline = 10
    sid = await api.pull_subscription("bulk", ack_deadline_seconds=deadline)
    published: list[str] = []
    for start in range(0, 10_000, 1000):
        batch = {"messages": [{"body": f"m{n}"} for n in range(start, start + 1000)]}
        answer = await api.ok("POST", "/v1/topics/bulk/messages", batch)
        published += [result["id"] for result in answer["results"]]
    taken: list[str] = []
    async with asyncio.timeout(120):
        while len(taken) < len(published):
            messages = await api.pull(sid, max_messages=500, wait=5)
            assert len(messages) <= 500
            acked = await api.settle(sid, "ack", [m["ack_id"] for m in messages])
            assert acked["expired"] == []
            taken += [m["message_id"] for m in messages]
    assert len(taken) == len(set(taken)) == 10_000
    assert set(taken) == set(published)
    assert await api.pull(sid, wait=deadline + 1) == [], "an acked message came again"


async def test_what_a_long_poll_took_for_a_client_that_left_is_due_again_at_once(
    api: Api,
) -> None:
    sid = await api.pull_subscription("left", ack_deadline_seconds=600)
    leaving = asyncio.create_task(api.pull(sid, wait=20))
    await asyncio.sleep(0.3)
    leaving.cancel()  # closes its connection while the server waits for a message
    with contextlib.suppress(asyncio.CancelledError):
        await leaving
    await asyncio.sleep(0.3)
    await api.publish("left", "for whoever stays")
    # Not leased to the client that left for its 600 s deadline: the next pull has it.
    (message,) = await api.pull_until(sid, 1)
    assert (message["body"], message["attempt"]) == ("for whoever stays", 1)
