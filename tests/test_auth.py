"""Who may do what, through the real server: 401 for a missing or bad key, 403 for a key
without the right, connection ownership, topic limits, revocation, keys surviving a
restart (stored hashed), the per-key connection limit, and protected mode."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import ReceiverFactory, ServerFactory
from tests.support import raw_http
from tests.support.launcher import run_mqpy_text
from tests.support.load import unused_port
from tests.support.problems import check_problem
from tests.support.server import ServerProcess

ADMIN_KEY = "test-admin-key-8b1f0c2e9d"
ADMIN_ENV = {"MQPY_ADMIN_KEY": ADMIN_KEY}
# An empty MQPY_ADMIN_KEY counts as none, whatever the developer's environment holds.
NO_KEY_ENV = {"MQPY_ADMIN_KEY": ""}
SEND = {"ClientURL": "", "mode": "send"}


def call(
    server: ServerProcess | str,
    method: str,
    path: str,
    body: Any = None,
    key: str | None = None,
    authorization: str | None = None,
) -> raw_http.RawResponse:
    """One request to 127.0.0.1; `key` is sent as a bearer token."""
    base = server if isinstance(server, str) else server.url
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    if authorization is not None:
        headers["Authorization"] = authorization
    data = None if body is None else json.dumps(body).encode()
    return raw_http.request(base, method, path, data, headers)


def ok(response: raw_http.RawResponse, status: int = 200) -> Any:
    assert response.status == status, (response.status, response.body[:500])
    return response.json() if response.body else None


def problem(response: raw_http.RawResponse, status: int) -> dict[str, Any]:
    return check_problem(response.status, response.content_type, response.body, status)


def unauthorized(response: raw_http.RawResponse) -> dict[str, Any]:
    found = problem(response, 401)
    challenge = response.headers.get("www-authenticate", "")
    assert challenge.lower().startswith("bearer"), response.headers
    return found


@dataclass(frozen=True)
class Key:
    id: str
    key: str
    role: str
    topics: list[str]

    @property
    def secret(self) -> str:
        return self.key.removeprefix(f"mqpy_{self.id}_")


def create_key(server: ServerProcess, role: str, topics: list[str] | None = None) -> Key:
    body: dict[str, Any] = {"role": role}
    if topics is not None:
        body["topics"] = topics
    answer = ok(call(server, "POST", "/v1/keys", body, key=ADMIN_KEY), 201)
    return Key(answer["id"], answer["key"], answer["role"], answer["topics"])


def connect_sender(server: ServerProcess, key: str) -> int:
    return int(ok(call(server, "POST", "/connect", SEND, key=key))["id"])


def receive_body(url: str) -> dict[str, str]:
    return {"ClientURL": url, "mode": "receive"}


@pytest.fixture
def secured(start_server: ServerFactory) -> ServerProcess:
    """A broker with a bootstrap admin key: every route but the dashboard needs a key."""
    return start_server(env=ADMIN_ENV)


# -- 401: no key, or a key that is not valid --------------------------------------------------

PROTECTED = [
    ("POST", "/connect", SEND),
    ("POST", "/connect/", SEND),
    ("POST", "/send", {"id": 1, "body": "hello"}),
    ("POST", "/disconnect", {"id": 1}),
    ("GET", "/v1/dead-letters", None),
    ("POST", "/v1/dead-letters/redrive", {}),
    ("GET", "/v1/keys", None),
    ("POST", "/v1/keys", {"role": "admin"}),
    ("DELETE", "/v1/keys/000000000000", None),
]


def test_every_route_but_the_dashboard_needs_a_key(secured: ServerProcess) -> None:
    for method, path, body in PROTECTED:
        detail = unauthorized(call(secured, method, path, body))["detail"]
        assert "Authorization: Bearer" in detail, (method, path, detail)
    # Nothing was done on the way: no key was created.
    assert ok(call(secured, "GET", "/v1/keys", key=ADMIN_KEY)) == {"keys": []}


def test_the_dashboard_stays_readable_without_a_key(secured: ServerProcess) -> None:
    response = call(secured, "GET", "/dashboard")
    assert response.status == 200, response
    assert response.content_type == "text/html"


def test_a_key_that_is_not_valid_is_401(secured: ServerProcess) -> None:
    real = create_key(secured, "admin")
    wrong = [
        "Bearer nonsense",
        f"Bearer {ADMIN_KEY}x",
        "Bearer mqpy_000000000000_" + real.secret,  # unknown id
        f"Bearer mqpy_{real.id}_{real.secret[:-1]}",  # wrong secret
        f"Bearer mqpy_{real.id}",  # no secret
        f"Basic {ADMIN_KEY}",  # not a bearer token
        "Bearer ",
    ]
    for authorization in wrong:
        for method, path, body in [("GET", "/v1/keys", None), ("POST", "/connect", SEND)]:
            response = call(secured, method, path, body, authorization=authorization)
            unauthorized(response)
    ok(call(secured, "GET", "/v1/keys", key=real.key))


# -- keys: created by an admin, shown once, stored hashed ---------------------------------


def test_an_admin_creates_keys_shown_in_full_only_once(secured: ServerProcess) -> None:
    publisher = create_key(secured, "publisher")
    subscriber = create_key(secured, "subscriber", ["orders.*", "billing"])
    assert publisher.key.startswith(f"mqpy_{publisher.id}_") and publisher.secret
    assert subscriber.key.startswith(f"mqpy_{subscriber.id}_") and subscriber.secret
    assert publisher.id != subscriber.id
    assert (publisher.role, publisher.topics) == ("publisher", [])
    assert (subscriber.role, subscriber.topics) == ("subscriber", ["orders.*", "billing"])

    listed = call(secured, "GET", "/v1/keys", key=ADMIN_KEY)
    keys = ok(listed)["keys"]
    assert {(k["id"], k["role"], tuple(k["topics"])) for k in keys} == {
        (publisher.id, "publisher", ()),
        (subscriber.id, "subscriber", ("orders.*", "billing")),
    }
    for key in keys:
        assert set(key) == {"id", "role", "topics", "created_at"}, key
    text = listed.body.decode()
    for made in (publisher, subscriber):
        assert made.secret not in text and made.key not in text
    assert "hash" not in text


def test_a_bad_key_request_is_400(secured: ServerProcess) -> None:
    for body, field in [
        ({"role": "superuser"}, "role"),
        ({"role": "publisher", "topics": ["orders..x"]}, "topics"),
        ({"topics": []}, "role"),
    ]:
        response = call(secured, "POST", "/v1/keys", body, key=ADMIN_KEY)
        check_problem(response.status, response.content_type, response.body, 400, field)
    assert ok(call(secured, "GET", "/v1/keys", key=ADMIN_KEY)) == {"keys": []}


# -- 403: roles ---------------------------------------------------------------------------


def test_a_publisher_may_send_and_nothing_else(secured: ServerProcess) -> None:
    publisher = create_key(secured, "publisher").key
    sender = connect_sender(secured, publisher)
    sent = ok(call(secured, "POST", "/send", {"id": sender, "body": "hi"}, key=publisher))
    assert sent["status"] == "Message enqueued."

    receive = receive_body(f"http://127.0.0.1:{unused_port()}/hook")
    refused = problem(call(secured, "POST", "/connect", receive, key=publisher), 403)
    assert "subscriber" in refused["detail"]
    problem(call(secured, "GET", "/v1/dead-letters", key=publisher), 403)
    problem(call(secured, "POST", "/v1/dead-letters/redrive", {}, key=publisher), 403)
    problem(call(secured, "GET", "/v1/keys", key=publisher), 403)
    problem(call(secured, "POST", "/v1/keys", {"role": "admin"}, key=publisher), 403)
    problem(call(secured, "DELETE", "/v1/keys/000000000000", key=publisher), 403)
    ok(call(secured, "POST", "/disconnect", {"id": sender}, key=publisher))


def test_a_subscriber_may_receive_but_not_send(secured: ServerProcess) -> None:
    subscriber = create_key(secured, "subscriber").key
    receive = receive_body(f"http://127.0.0.1:{unused_port()}/hook")
    receiver = ok(call(secured, "POST", "/connect", receive, key=subscriber))
    assert receiver["secret"].startswith("whsec_")

    detail = problem(call(secured, "POST", "/connect", SEND, key=subscriber), 403)["detail"]
    assert "publisher" in detail
    body = {"id": receiver["id"], "body": "hi"}
    problem(call(secured, "POST", "/send", body, key=subscriber), 403)
    problem(call(secured, "GET", "/v1/keys", key=subscriber), 403)
    problem(call(secured, "GET", "/v1/dead-letters", key=subscriber), 403)
    ok(call(secured, "POST", "/disconnect", {"id": receiver["id"]}, key=subscriber))


async def test_key_holders_speak_the_seed_protocol_end_to_end(
    secured: ServerProcess, start_receiver: ReceiverFactory, http: aiohttp.ClientSession
) -> None:
    publisher = create_key(secured, "publisher").key
    subscriber = create_key(secured, "subscriber").key
    receiver = await start_receiver()

    async def post(path: str, body: Any, key: str) -> Any:
        headers = {"Authorization": f"Bearer {key}"}
        async with http.post(secured.url + path, json=body, headers=headers) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    await post("/connect", receive_body(receiver.url), subscriber)
    sender = (await post("/connect", SEND, publisher))["id"]
    await post("/send", {"id": sender, "body": "for key holders"}, publisher)
    [delivery] = await receiver.wait_for(1, timeout=15)
    assert delivery.text == "for key holders"


# -- connection ownership -----------------------------------------------------------------


# In a group a disconnect reaches the other processes within a second (docs/operations.md).
@pytest.mark.one_process
def test_a_connection_belongs_to_the_key_that_made_it(secured: ServerProcess) -> None:
    alice = create_key(secured, "publisher").key
    bob = create_key(secured, "publisher").key
    alices = connect_sender(secured, alice)
    connect_sender(secured, bob)  # bob is a sender too, just not on alice's connection

    detail = problem(
        call(secured, "POST", "/send", {"id": alices, "body": "as alice"}, key=bob), 403
    )["detail"]
    assert "another key" in detail
    problem(call(secured, "POST", "/disconnect", {"id": alices}, key=bob), 403)

    # Both refusals left alice's connection alone.
    ok(call(secured, "POST", "/send", {"id": alices, "body": "mine"}, key=alice))
    # An admin may act on any connection.
    ok(call(secured, "POST", "/send", {"id": alices, "body": "ops"}, key=ADMIN_KEY))
    ok(call(secured, "POST", "/disconnect", {"id": alices}, key=ADMIN_KEY))
    problem(call(secured, "POST", "/send", {"id": alices, "body": "gone"}, key=alice), 404)


# -- topic limits -------------------------------------------------------------------------


def test_a_key_limited_to_other_topics_may_not_use_the_seed_topic(
    secured: ServerProcess,
) -> None:
    orders_only = create_key(secured, "publisher", ["orders.*"]).key
    detail = problem(call(secured, "POST", "/connect", SEND, key=orders_only), 403)["detail"]
    assert "default" in detail

    receive = receive_body(f"http://127.0.0.1:{unused_port()}/hook")
    orders_reader = create_key(secured, "subscriber", ["orders.>"]).key
    problem(call(secured, "POST", "/connect", receive, key=orders_reader), 403)

    for topics in (["default"], ["orders.*", "default"], ["*"], ["default.>", ">"], []):
        key = create_key(secured, "publisher", topics).key
        connect_sender(secured, key)


# -- revocation ---------------------------------------------------------------------------


# In a group a key revoked through one process is refused by the others within a second
# (docs/operations.md, "What the nodes share").
@pytest.mark.one_process
def test_a_revoked_key_is_refused_at_its_next_request(secured: ServerProcess) -> None:
    revoked = create_key(secured, "publisher")
    kept = create_key(secured, "publisher")
    sender = connect_sender(secured, revoked.key)

    ok(call(secured, "DELETE", f"/v1/keys/{revoked.id}", key=ADMIN_KEY), 204)

    unauthorized(call(secured, "POST", "/send", {"id": sender, "body": "x"}, key=revoked.key))
    unauthorized(call(secured, "POST", "/connect", SEND, key=revoked.key))
    listed = ok(call(secured, "GET", "/v1/keys", key=ADMIN_KEY))["keys"]
    assert [k["id"] for k in listed] == [kept.id]
    connect_sender(secured, kept.key)
    # Revoking twice, or a key that never existed: 404.
    problem(call(secured, "DELETE", f"/v1/keys/{revoked.id}", key=ADMIN_KEY), 404)
    problem(call(secured, "DELETE", "/v1/keys/ffffffffffff", key=ADMIN_KEY), 404)


def test_keys_survive_a_restart_and_are_stored_hashed(start_server: ServerFactory) -> None:
    server = start_server(env=ADMIN_ENV)
    kept = create_key(server, "publisher", ["default"])
    revoked = create_key(server, "subscriber")
    ok(call(server, "DELETE", f"/v1/keys/{revoked.id}", key=ADMIN_KEY), 204)
    assert server.terminate() == 0

    server.restart()
    connect_sender(server, kept.key)
    unauthorized(call(server, "GET", "/v1/keys", key=revoked.key))
    listed = ok(call(server, "GET", "/v1/keys", key=ADMIN_KEY))["keys"]
    assert [(k["id"], k["topics"]) for k in listed] == [(kept.id, ["default"])]

    stored = [path for path in server.data_dir.rglob("*") if path.is_file()]
    assert any(path.suffix in (".db", ".sqlite", ".sqlite3") for path in stored), stored
    for path in stored:
        content = path.read_bytes()
        for key in (kept, revoked):
            assert key.secret.encode() not in content, f"{path} holds a key's secret"


# -- limits -------------------------------------------------------------------------------


# In a group --max-connections-per-key counts other processes' connections within a
# second (docs/operations.md, "What the nodes share").
@pytest.mark.one_process
def test_connections_per_key_are_limited(start_server: ServerFactory) -> None:
    server = start_server("--max-connections-per-key", "2", env=ADMIN_ENV)
    publisher = create_key(server, "publisher").key
    first = connect_sender(server, publisher)
    connect_sender(server, publisher)
    detail = problem(call(server, "POST", "/connect", SEND, key=publisher), 403)["detail"]
    assert "--max-connections-per-key" in detail
    # The limit is per key: another key still connects.
    connect_sender(server, create_key(server, "publisher").key)
    # And it counts connections held, not ever made.
    ok(call(server, "POST", "/disconnect", {"id": first}, key=publisher))
    connect_sender(server, publisher)


# -- no key configured: open, on loopback ---------------------------------------------------


def test_with_no_key_configured_every_route_is_open(start_server: ServerFactory) -> None:
    server = start_server(env=NO_KEY_ENV)
    assert ok(call(server, "GET", "/v1/keys")) == {"keys": []}
    connect_sender(server, "ignored-when-access-is-open")


# -- protected mode -----------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MQPY_")}
    return {**env, **extra}


def test_a_public_host_with_no_key_refuses_to_start(tmp_path: Path) -> None:
    port = unused_port()
    command = ["serve", "--host", "0.0.0.0", "--port", str(port), "--data-dir", str(tmp_path / "d")]
    result = run_mqpy_text(command, clean_env(), timeout=20)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "MQPY_ADMIN_KEY" in result.stderr, result.stderr
    assert "--allow-unauthenticated" in result.stderr, result.stderr
    assert "listening on" not in result.stderr, result.stderr


def local_url(server: ServerProcess) -> str:
    """Where a server bound to 0.0.0.0 answers on loopback."""
    assert server.url.startswith("http://0.0.0.0:"), server.url
    return f"http://127.0.0.1:{server.port}"


def test_allow_unauthenticated_starts_and_warns(start_server: ServerFactory) -> None:
    server = start_server("--host", "0.0.0.0", "--allow-unauthenticated", env=NO_KEY_ENV)
    try:
        assert "UNAUTHENTICATED" in server.log, server.log
        assert ok(call(local_url(server), "GET", "/v1/keys")) == {"keys": []}
    finally:
        server.kill()


def test_a_public_host_with_an_admin_key_starts(start_server: ServerFactory) -> None:
    server = start_server("--host", "0.0.0.0", env=ADMIN_ENV)
    try:
        assert "UNAUTHENTICATED" not in server.log, server.log
        unauthorized(call(local_url(server), "POST", "/connect", SEND))
        ok(call(local_url(server), "POST", "/connect", SEND, key=ADMIN_KEY))
    finally:
        server.kill()


def test_revoking_the_last_stored_key_does_not_open_a_public_server(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    """Stored keys alone count as "a key configured" (no MQPY_ADMIN_KEY): the server
    starts on a public host. Revoking the last of them must not leave it open there."""
    data_dir = tmp_path / "keys-only"
    setup = start_server(data_dir=data_dir, env=NO_KEY_ENV)  # open, on loopback
    answer = ok(call(setup, "POST", "/v1/keys", {"role": "admin"}), 201)
    assert setup.terminate() == 0

    public = start_server("--host", "0.0.0.0", data_dir=data_dir, env=NO_KEY_ENV)
    try:
        url = local_url(public)
        unauthorized(call(url, "POST", "/connect", SEND))
        ok(call(url, "DELETE", f"/v1/keys/{answer['id']}", key=answer["key"]), 204)
        response = call(url, "POST", "/connect", SEND)
        assert response.status in (401, 403), (
            "with its last key revoked, a server on 0.0.0.0 accepts anyone: "
            f"{response.status} {response.body!r}"
        )
    finally:
        public.kill()


async def test_revoking_a_key_disconnects_its_receivers(
    start_server: ServerFactory, start_receiver: ReceiverFactory, http: aiohttp.ClientSession
) -> None:
    """A revoked subscriber's receivers are disconnected: nothing more is pushed to them."""
    server = start_server(env={"MQPY_ADMIN_KEY": ADMIN_KEY})
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with http.post(
        server.url + "/v1/keys", json={"role": "subscriber"}, headers=admin
    ) as response:
        subscriber = (await response.json())["key"]
    receiver = await start_receiver()
    async with http.post(
        server.url + "/connect",
        json={"ClientURL": receiver.url, "mode": "receive"},
        headers={"Authorization": f"Bearer {subscriber}"},
    ) as response:
        assert response.status == 200
    async with http.post(server.url + "/connect", json={"mode": "send"}, headers=admin) as r:
        sender = (await r.json())["id"]
    async with http.post(
        server.url + "/send", json={"id": sender, "body": "before"}, headers=admin
    ) as response:
        assert response.status == 200
    await receiver.wait_for(1)
    key_id = subscriber.split("_")[1]
    async with http.delete(server.url + f"/v1/keys/{key_id}", headers=admin) as response:
        assert response.status == 204
    async with http.get(server.url + "/dashboard") as response:
        assert 'id="readers">0<' in await response.text()
    async with http.post(
        server.url + "/send", json={"id": sender, "body": "after"}, headers=admin
    ) as response:
        assert response.status == 200
    await asyncio.sleep(0.5)
    assert [r.text for r in receiver.received] == ["before"]


async def test_a_web_page_on_another_site_cannot_make_a_browser_publish(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    """With no key configured the broker trusts anyone on loopback; a browser visiting
    another site must still not be usable to publish (cross-site request forgery)."""
    server = start_server(env={"MQPY_ADMIN_KEY": ""})
    body = {"ClientURL": "", "mode": "send"}
    async with http.post(
        server.url + "/connect", json=body, headers={"Origin": "https://evil.example"}
    ) as response:
        assert response.status == 403
        assert response.content_type == "application/problem+json"
        assert "evil.example" in (await response.json())["detail"]
    own_origin = server.url.rstrip("/")
    async with http.post(
        server.url + "/connect", json=body, headers={"Origin": own_origin}
    ) as response:
        assert response.status == 200
    async with http.post(server.url + "/connect", json=body) as response:
        assert response.status == 200, "programs send no Origin and are not affected"
