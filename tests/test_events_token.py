"""Tokens for a pull subscription's event stream, through the real server with keys: a
browser's EventSource cannot send Authorization, so POST .../events-token hands out a
short-lived token that opens GET .../events as ?token=, for that subscription alone,
on that route alone, until it expires or its key is revoked."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from tests.conftest import ServerFactory
from tests.support.problems import check_problem
from tests.support.server import ServerProcess

ADMIN_KEY = "events-token-test-admin-key-41c9"


class Caller:
    def __init__(self, http: aiohttp.ClientSession, url: str, key: str | None) -> None:
        self.http, self.url = http, url
        self.headers = {} if key is None else {"Authorization": f"Bearer {key}"}

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, str, bytes]:
        async with self.http.request(
            method, self.url + path, json=body, headers=self.headers
        ) as answer:
            return answer.status, answer.content_type, await answer.read()

    async def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        got, _, raw = await self.call(method, path, body)
        assert got == status, (got, raw)
        return json.loads(raw) if raw else None


@pytest.fixture
def server(start_server: ServerFactory) -> ServerProcess:
    return start_server(env={"MQPY_ADMIN_KEY": ADMIN_KEY})


@pytest.fixture
def admin(http: aiohttp.ClientSession, server: ServerProcess) -> Caller:
    return Caller(http, server.url, ADMIN_KEY)


async def subscriber(admin: Caller) -> tuple[Caller, str]:
    created = await admin.ok("POST", "/v1/keys", {"role": "subscriber"}, status=201)
    return Caller(admin.http, admin.url, created["key"]), created["id"]


async def pull_subscription(caller: Caller, topic: str) -> int:
    body = {"kind": "pull", "topic": topic}
    return int((await caller.ok("POST", "/v1/subscriptions", body, status=201))["id"])


async def first_event(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    """The first message of a stream opened with no Authorization header, as EventSource does."""
    async with asyncio.timeout(20), http.get(url) as response:
        assert response.status == 200, await response.text()
        assert response.content_type == "text/event-stream"
        async for line in response.content:
            if line.startswith(b"data: "):
                return dict(json.loads(line[len(b"data: ") :]))
    raise AssertionError("the stream ended without a message")


async def refused(http: aiohttp.ClientSession, method: str, url: str) -> dict[str, Any]:
    async with http.request(method, url) as answer:
        return check_problem(answer.status, answer.content_type, await answer.read(), 401)


async def test_a_token_opens_the_stream_without_authorization(
    admin: Caller, http: aiohttp.ClientSession
) -> None:
    caller, _ = await subscriber(admin)
    subscription = await pull_subscription(caller, "feed")
    answer = await caller.ok("POST", f"/v1/subscriptions/{subscription}/events-token")
    assert answer["token"].startswith("mqst_")
    assert answer["url"] == f"/v1/subscriptions/{subscription}/events?token={answer['token']}"
    await admin.ok("POST", "/v1/topics/feed/messages", {"body": "to the page"}, status=201)
    event = await first_event(http, admin.url + answer["url"])
    assert event["body"] == "to the page"
    acked = await caller.ok(
        "POST", f"/v1/subscriptions/{subscription}/ack", {"ack_ids": [event["ack_id"]]}
    )
    assert acked["acked"] == [event["ack_id"]]


async def test_a_token_opens_only_its_own_subscriptions_stream(
    admin: Caller, http: aiohttp.ClientSession
) -> None:
    caller, _ = await subscriber(admin)
    mine, other = await pull_subscription(caller, "a"), await pull_subscription(caller, "b")
    token = (await caller.ok("POST", f"/v1/subscriptions/{mine}/events-token"))["token"]
    problem = await refused(
        http, "GET", f"{admin.url}/v1/subscriptions/{other}/events?token={token}"
    )
    assert "another subscription" in problem["detail"] and "events-token" in problem["detail"]
    # Nowhere else either: not to pull, ack or list.
    await refused(http, "POST", f"{admin.url}/v1/subscriptions/{mine}/pull?token={token}")
    await refused(http, "GET", f"{admin.url}/v1/subscriptions?token={token}")
    # An altered token is no token.
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    await refused(http, "GET", f"{admin.url}/v1/subscriptions/{mine}/events?token={forged}")


async def test_a_token_expires_and_dies_with_its_key(
    admin: Caller, http: aiohttp.ClientSession
) -> None:
    caller, key_id = await subscriber(admin)
    subscription = await pull_subscription(caller, "short")
    path = f"/v1/subscriptions/{subscription}/events-token"
    short = (await caller.ok("POST", path, {"ttl_seconds": 1}))["url"]
    lasting = (await caller.ok("POST", path))["url"]
    await asyncio.sleep(1.2)
    await refused(http, "GET", admin.url + short)
    await admin.ok("POST", "/v1/topics/short/messages", {"body": "still open"}, status=201)
    assert (await first_event(http, admin.url + lasting))["body"] == "still open"
    await admin.ok("DELETE", f"/v1/keys/{key_id}", status=204)
    await refused(http, "GET", admin.url + lasting)


async def test_bad_requests_for_a_token(admin: Caller) -> None:
    caller, _ = await subscriber(admin)
    subscription = await pull_subscription(caller, "t")
    path = f"/v1/subscriptions/{subscription}/events-token"
    status, content_type, raw = await caller.call("POST", path, {"ttl_seconds": 86400})
    problem = check_problem(status, content_type, raw, 400, "ttl_seconds")
    assert "3600" in problem["detail"] and "86400" in problem["detail"]
    pushed = await admin.ok(
        "POST", "/v1/subscriptions", {"url": "http://127.0.0.1:9/x", "topic": "t"}, status=201
    )
    status, content_type, raw = await admin.call(
        "POST", f"/v1/subscriptions/{pushed['id']}/events-token"
    )
    check_problem(status, content_type, raw, 409)
    # Another subscriber's subscription: not theirs to read.
    stranger, _ = await subscriber(admin)
    status, content_type, raw = await stranger.call("POST", path)
    check_problem(status, content_type, raw, (403, 404))
    # Without a key there is no token to be had.
    status, content_type, raw = await Caller(admin.http, admin.url, None).call("POST", path)
    check_problem(status, content_type, raw, 401)


async def test_the_client_hands_out_a_stream_url_for_a_page(
    admin: Caller, http: aiohttp.ClientSession
) -> None:
    import mqpy

    caller, _ = await subscriber(admin)
    key = caller.headers["Authorization"].removeprefix("Bearer ")
    async with mqpy.AsyncClient(admin.url, key=key) as client:
        subscription = await client.create_pull_subscription("page")
        token = await client.events_token(subscription, ttl_seconds=30)
    assert token.url == f"{admin.url}/v1/subscriptions/{subscription}/events?token={token.token}"
    with mqpy.Client(admin.url, key=key) as blocking:
        assert (await asyncio.to_thread(blocking.events_token, subscription)).token
    await admin.ok("POST", "/v1/topics/page/messages", {"body": "for the page"}, status=201)
    assert (await first_event(http, token.url))["body"] == "for the page"
