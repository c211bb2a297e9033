"""Endpoint health through the real server, on SQLite and PostgreSQL: a push
subscription whose every attempt failed for a scaled-down --disable-after is disabled,
keeps its messages across a restart, and delivers them once resumed; the broker's
events on `mq.events` reach a real receiver (push) and a pull consumer; who may
subscribe to `mq.events`; and two PostgreSQL nodes that both stop delivering."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import ReceiverFactory, ServerFactory
from tests.support.receiver import Receiver
from tests.test_pull import Api

DISABLE_AFTER = "2s"
FAST = ("--retry-base", "0.05", "--retry-max", "0.3", "--max-attempts", "1000")


class Switch:
    """A receiver's behaviour: 500 while `broken`, else 204."""

    def __init__(self, broken: bool = True) -> None:
        self.broken = broken

    async def __call__(self, request: web.Request, number: int) -> web.StreamResponse:
        return web.Response(status=500 if self.broken else 204)


@pytest.fixture(params=["sqlite", "postgres"])
def store_args(request: pytest.FixtureRequest) -> tuple[str, ...]:
    if request.param == "sqlite":
        return ()
    return ("--store", request.getfixturevalue("postgres_url"))


def events_of(receiver: Receiver) -> list[dict[str, Any]]:
    return [json.loads(str(r.text)) for r in receiver.received]


async def until(check: Any, timeout: float = 20.0) -> Any:
    """Poll `check()` (a coroutine function) until it returns something true."""
    async with asyncio.timeout(timeout):
        while True:
            found = await check()
            if found:
                return found
            await asyncio.sleep(0.1)


async def state_of(api: Api, sid: int) -> dict[str, Any]:
    return dict(await api.ok("GET", f"/v1/subscriptions/{sid}"))


async def push(api: Api, url: str, topic: str, **fields: Any) -> int:
    body = {"url": url, "topic": topic, **fields}
    return int((await api.ok("POST", "/v1/subscriptions", body, status=201))["id"])


async def quiet(receiver: Receiver, seconds: float = 1.5) -> None:
    """Assert that nothing reaches `receiver` for `seconds` (after in-flight ones end)."""
    await asyncio.sleep(0.5)
    before = len(receiver.attempts)
    await asyncio.sleep(seconds)
    assert len(receiver.attempts) == before


@pytest.mark.slow  # about 7 s on each store
async def test_a_dead_endpoint_is_disabled_and_its_messages_wait_for_resume(
    start_server: ServerFactory,
    start_receiver: ReceiverFactory,
    http: aiohttp.ClientSession,
    store_args: tuple[str, ...],
) -> None:
    args = (*store_args, *FAST, "--disable-after", DISABLE_AFTER)
    server = start_server(*args, env={"MQPY_ADMIN_KEY": ""})
    api = Api(http, server.url)
    watcher = await start_receiver()
    await push(api, watcher.url, "mq.events")
    puller = await api.pull_subscription("mq.events")
    switch = Switch()
    endpoint = await start_receiver(switch)
    sid = await push(api, endpoint.url, "orders")
    ids = await api.publish("orders", "one", "two", "three")

    disabled = await until(
        lambda: _when(state_of(api, sid), lambda s: s["state"] == "disabled"), timeout=30
    )
    assert disabled["disabled_reason"].startswith("every attempt failed for 2s (since ")
    assert disabled["disabled_reason"].endswith("; last error: receiver answered HTTP 500")
    assert disabled["failing_since"] is not None and disabled["disabled_at"] is not None
    async with http.get(server.url + "/metrics") as scraped:
        assert 'mqpy_receivers{state="disabled"} 1.0' in await scraped.text()
    (event,) = [e for e in events_of(await _wait(watcher, 1)) if e["subscription_id"] == sid]
    assert (event["type"], event["topic"], event["reason"]) == (
        "subscription.disabled",
        "orders",
        disabled["disabled_reason"],
    )
    (pulled,) = await api.pull_until(puller, 1)
    assert json.loads(pulled["body"]) == event
    assert pulled["attributes"] == {"type": "subscription.disabled"}
    await quiet(endpoint)

    # Kept across a restart: still disabled, its messages still pending, not dead.
    server.terminate()
    server = server.restart()
    api = Api(http, server.url)
    assert (await state_of(api, sid))["state"] == "disabled"
    await quiet(endpoint)
    for message_id in ids:
        kept = await api.ok("GET", f"/v1/messages/{message_id}")
        assert [d["state"] for d in kept["deliveries"]] == ["pending"]

    switch.broken = False
    resumed = await api.ok("POST", f"/v1/subscriptions/{sid}/resume")
    assert (resumed["state"], resumed["disabled_reason"], resumed["failing_since"]) == (
        "active",
        None,
        None,
    )
    await endpoint.wait_for(3)
    assert sorted(str(r.text) for r in endpoint.received) == ["one", "three", "two"]
    resumed_event = await until(
        lambda: _found(watcher, lambda e: e["type"] == "subscription.resumed")
    )
    assert resumed_event["subscription_id"] == sid


async def test_a_dead_letter_is_an_event_and_an_events_dead_letter_is_none(
    start_server: ServerFactory,
    start_receiver: ReceiverFactory,
    http: aiohttp.ClientSession,
    store_args: tuple[str, ...],
) -> None:
    server = start_server(*store_args, *FAST, env={"MQPY_ADMIN_KEY": ""})
    api = Api(http, server.url)
    watcher = await start_receiver()
    await push(api, watcher.url, "mq.events", filter={"type": "delivery.dead_lettered"})
    # A receiver of the events that fails them all: its dead letters make no event.
    broken_watcher = await start_receiver(Switch())
    failing = await push(api, broken_watcher.url, "mq.events", retry_policy={"max_attempts": 1})
    sid = await push(api, "http://127.0.0.1:9/nobody", "orders", retry_policy={"max_attempts": 2})
    (message_id,) = await api.publish("orders", "poison")
    (event,) = events_of(await _wait(watcher, 1))
    assert {k: event[k] for k in ("type", "subscription_id", "message_id", "topic")} == {
        "type": "delivery.dead_lettered",
        "subscription_id": sid,
        "message_id": message_id,
        "topic": "orders",
    }
    assert event["attempts"] == 2 and "cannot connect" in event["last_error"]
    await until(lambda: _dead_letters(api, failing))
    await asyncio.sleep(1.0)
    assert len(watcher.received) == 1


async def test_a_receiver_that_fails_then_recovers_is_not_disabled(
    start_server: ServerFactory,
    start_receiver: ReceiverFactory,
    http: aiohttp.ClientSession,
) -> None:
    server = start_server(*FAST, "--disable-after", DISABLE_AFTER, env={"MQPY_ADMIN_KEY": ""})
    api = Api(http, server.url)
    switch = Switch()
    endpoint = await start_receiver(switch)
    sid = await push(api, endpoint.url, "orders")
    await api.publish("orders", "early")
    await endpoint.wait_for_attempts(1)
    await asyncio.sleep(1.2)
    assert (await state_of(api, sid))["failing_since"] is not None
    switch.broken = False
    await endpoint.wait_for(1)
    # Failing again: 2.6 s after the first failure (and several checks later), but
    # only 1.4 s after the success, so within the disable-after of this new run.
    switch.broken = True
    await api.publish("orders", "late")
    await asyncio.sleep(1.4)
    shown = await state_of(api, sid)
    assert shown["state"] == "active", shown
    assert shown["failing_since"] is not None
    switch.broken = False
    await endpoint.wait_for(2)


async def test_who_may_subscribe_to_the_events_and_that_nobody_publishes_there(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = start_server(env={"MQPY_ADMIN_KEY": "admin-key-for-events-test"})
    admin = Api(http, server.url)
    admin_headers = {"Authorization": "Bearer admin-key-for-events-test"}

    async def key(*topics: str) -> Api:
        body = {"role": "subscriber", "topics": list(topics)}
        async with http.post(server.url + "/v1/keys", json=body, headers=admin_headers) as made:
            assert made.status == 201, await made.text()
            secret = (await made.json())["key"]
        session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {secret}"})
        sessions.append(session)
        return Api(session, server.url)

    sessions: list[aiohttp.ClientSession] = []
    try:
        admin.http = aiohttp.ClientSession(headers=admin_headers)
        sessions.append(admin.http)
        anything = await key()
        problem = await anything.problem(
            "POST", "/v1/subscriptions", {"kind": "pull", "topic": "mq.events"}, 403
        )
        assert "mq.events" in problem["detail"] and "admin key" in problem["detail"]
        # Everything but the broker's own: a wildcard does not reach them.
        await anything.ok("POST", "/v1/subscriptions", {"kind": "pull", "topic": ">"}, status=201)
        named = await key("mq.events")
        await named.ok(
            "POST", "/v1/subscriptions", {"kind": "pull", "topic": "mq.events"}, status=201
        )
        await admin.ok("POST", "/v1/subscriptions", {"kind": "pull", "topic": "mq.>"}, status=201)
        problem = await admin.problem("POST", "/v1/topics/mq.events/messages", {"body": "x"}, 403)
        assert "only the broker publishes" in problem["detail"]
    finally:
        for session in sessions:
            await session.close()


@pytest.mark.slow  # two nodes, about 5 s
async def test_two_nodes_stop_delivering_to_a_subscription_one_disabled(
    start_server: ServerFactory,
    start_receiver: ReceiverFactory,
    http: aiohttp.ClientSession,
    postgres_url: str,
) -> None:
    args = ("--store", postgres_url, *FAST, "--disable-after", DISABLE_AFTER)
    first, second = (start_server(*args) for _ in range(2))
    via_first, via_second = Api(http, first.url), Api(http, second.url)
    watcher = await start_receiver()
    await push(via_second, watcher.url, "mq.events")
    endpoint = await start_receiver(Switch())
    sid = await push(via_first, endpoint.url, "orders")
    await via_first.publish("orders", *(f"m{n}" for n in range(20)))
    await via_second.publish("orders", *(f"n{n}" for n in range(20)))
    await until(lambda: _when(state_of(via_second, sid), lambda s: s["state"] == "disabled"))
    await quiet(endpoint)
    events = [e for e in events_of(await _wait(watcher, 1)) if e["subscription_id"] == sid]
    assert [e["type"] for e in events] == ["subscription.disabled"]  # one node decided
    assert (await state_of(via_first, sid))["state"] == "disabled"


async def _when(shown: Any, holds: Any) -> Any:
    found = await shown
    return found if holds(found) else None


async def _found(receiver: Receiver, holds: Any) -> dict[str, Any] | None:
    return next((e for e in events_of(receiver) if holds(e)), None)


async def _wait(receiver: Receiver, count: int) -> Receiver:
    await receiver.wait_for(count)
    return receiver


async def _dead_letters(api: Api, sid: int) -> list[Any]:
    return list((await api.ok("GET", f"/v1/subscriptions/{sid}/dead-letters"))["dead_letters"])


async def test_disable_after_is_a_push_subscriptions_own_setting(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = start_server(env={"MQPY_ADMIN_KEY": ""})
    api = Api(http, server.url)
    hook = "http://127.0.0.1:9/hook"
    problem = await api.problem(
        "POST", "/v1/subscriptions", {"url": hook, "disable_after_seconds": 0}, 400
    )
    assert problem["field"] == "disable_after_seconds", problem
    problem = await api.problem(
        "POST", "/v1/subscriptions", {"kind": "pull", "disable_after_seconds": 60}, 400
    )
    assert "push subscriptions only" in problem["detail"], problem
    sid = await push(api, hook, "orders", disable_after_seconds=600)
    assert (await state_of(api, sid))["disable_after_seconds"] == 600
    changed = await api.ok("PATCH", f"/v1/subscriptions/{sid}", {"disable_after_seconds": 30})
    assert changed["disable_after_seconds"] == 30
    cleared = await api.ok("PATCH", f"/v1/subscriptions/{sid}", {"disable_after_seconds": None})
    assert cleared["disable_after_seconds"] is None  # the broker's --disable-after again
    pull = await api.pull_subscription("orders")
    await api.problem("PATCH", f"/v1/subscriptions/{pull}", {"disable_after_seconds": 30}, 409)
