"""`mqpy.Client`, `mqpy.AsyncClient` and `mqpy.client.receiver`, against a real server.

The examples of docs/client.md run here as they are written (only the URL changes), so
the page cannot drift from the code. The other tests check what a caller relies on:
the typed errors, which calls are retried and how long the client waits, one
connection reused, and a receiver that refuses what the broker did not sign.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import mqpy
from mqpy.client import Conflict, Message, Published
from mqpy.client.errors import error_from_answer
from mqpy.client.receiver import Delivery, InvalidDelivery, serve_receiver
from mqpy.client.retry import RetryPolicy
from mqpy.wire.retry_after import parse_retry_after
from mqpy.wire.signing import generate_secret, webhook_headers
from tests.conftest import ServerFactory
from tests.support import raw_http
from tests.support.api import call, ok
from tests.support.dashboard import dashboard_figures
from tests.support.load import FAST_RETRIES, unused_port
from tests.support.receiver import Receiver
from tests.support.server import ServerProcess

DOCS = Path(__file__).resolve().parents[1] / "docs" / "client.md"
DOC_URL = "http://127.0.0.1:8080"
ADMIN_KEY = "client-test-admin-key-0c41d7"
MESSAGE_ID = re.compile(r"msg_[0-9a-f]{32}")
_PROXY_VARIABLES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
_HEADING_OR_EXAMPLE = re.compile(r"^## ([^\n]+)$|^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


# -- the examples of docs/client.md ------------------------------------------------------


def doc_examples() -> list[tuple[str, str]]:
    """(the section's heading, the code) of every ```python block, in page order."""
    examples: list[tuple[str, str]] = []
    heading = ""
    for match in _HEADING_OR_EXAMPLE.finditer(DOCS.read_text()):
        if match.group(1):
            heading = match.group(1).strip()
        else:
            examples.append((heading, match.group(2)))
    return examples


EXAMPLES = doc_examples()


def example_id(example: tuple[str, str]) -> str:
    return re.sub(r"\W+", "-", example[0].lower()).strip("-")


def test_the_page_has_its_examples() -> None:
    assert len(EXAMPLES) >= 8, [heading for heading, _ in EXAMPLES]
    for heading, code in EXAMPLES:
        assert DOC_URL in code, f"the example under {heading!r} does not use {DOC_URL}"


def example_env() -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("MQPY_") and name.lower() not in _PROXY_VARIABLES
    }
    return {**env, "MQPY_KEY": ADMIN_KEY}


@pytest.mark.parametrize("example", EXAMPLES, ids=[example_id(e) for e in EXAMPLES])
def test_doc_example_runs(
    example: tuple[str, str], start_server: ServerFactory, tmp_path: Path
) -> None:
    heading, code = example
    server = start_server(*FAST_RETRIES, "--max-attempts", "1", env={"MQPY_ADMIN_KEY": ADMIN_KEY})
    dead_message = make_dead_letter(server) if "dead_letters()" in code else None

    script = tmp_path / "example.py"
    script.write_text(code.replace(DOC_URL, server.url))
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env=example_env(),
        cwd=tmp_path,
    )
    assert result.returncode == 0, f"{heading}:\n{result.stdout}\n{result.stderr}"
    assert result.stdout.strip(), f"the example under {heading!r} printed nothing"
    if dead_message is not None:
        assert dead_message in result.stdout, result.stdout
    # Every example cleans up after itself: no connection is left behind.
    assert figures(server)["writers"] == 0
    assert figures(server)["readers"] == (1 if dead_message else 0)


# A receiver (it keeps the secret /connect answered) that publishes what it waits for.
RECEIVES_AND_PUBLISHES = [e for e in EXAMPLES if ".secret" in e[1] and "publish" in e[1]]


@pytest.mark.parametrize(
    "example", RECEIVES_AND_PUBLISHES, ids=[example_id(e) for e in RECEIVES_AND_PUBLISHES]
)
def test_an_example_that_receives_and_publishes_says_it_needs_an_admin_key(
    example: tuple[str, str], start_server: ServerFactory, tmp_path: Path
) -> None:
    """Under a subscriber key it fails as the page says it does; the page names the key."""
    heading, code = example
    assert "an admin key" in code.lower(), heading
    server = start_server(*FAST_RETRIES, env={"MQPY_ADMIN_KEY": ADMIN_KEY})
    created = call(server.url, "POST", "/v1/keys", {"role": "subscriber"}, key=ADMIN_KEY)
    subscriber_key = ok(created, 201)["key"]
    script = tmp_path / "example.py"
    script.write_text(code.replace(DOC_URL, server.url))
    env = {**example_env(), "MQPY_KEY": subscriber_key}
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode != 0
    said = "needs a publisher or admin key"
    assert "Forbidden" in result.stderr and said in result.stderr, result.stderr
    assert said in " ".join(DOCS.read_text().split())  # the page quotes it


def make_dead_letter(server: ServerProcess) -> str:
    """A receiver nobody listens for, and a message that dies on it; returns its id."""
    with mqpy.Client(server.url, key=ADMIN_KEY) as client:
        client.connect("receive", f"http://127.0.0.1:{unused_port()}/hook")
        sender = client.connect("send")
        message_id = client.send(sender.id, "doomed")
        client.disconnect(sender.id)
        wait_for(lambda: bool(client.dead_letters()), "the dead letter")
    return message_id


# -- helpers --------------------------------------------------------------------------------


def figures(server: ServerProcess) -> dict[str, int]:
    page = raw_http.request(server.url, "GET", "/dashboard")
    return dashboard_figures(page.body.decode())


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Relay:
    """A TCP relay in front of the broker. It counts the connections clients open, and
    for the first `lose_answers` connections it passes the request on but drops the
    broker's answer and the connection: an answer lost on the way back."""

    def __init__(self, target: ServerProcess, lose_answers: int = 0) -> None:
        self.target_port = target.port
        self.lose_answers = lose_answers
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            lose = self.lose_answers > 0
            self.lose_answers -= lose
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            pair = (downstream, upstream)
            threading.Thread(target=_pump, args=(downstream, upstream, pair, False)).start()
            threading.Thread(target=_pump, args=(upstream, downstream, pair, lose)).start()

    def close(self) -> None:
        self._listener.close()


def _pump(
    source: socket.socket, sink: socket.socket, pair: tuple[socket.socket, ...], lose: bool
) -> None:
    try:
        while data := source.recv(65536):
            if lose:
                break
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for end in pair:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()


@pytest.fixture
def relay_factory() -> Iterator[list[Relay]]:
    relays: list[Relay] = []
    yield relays
    for relay in relays:
        relay.close()


@pytest.fixture
def secured(start_server: ServerFactory) -> ServerProcess:
    return start_server(env={"MQPY_ADMIN_KEY": ADMIN_KEY})


def create_key(server: ServerProcess, role: str) -> str:
    answer = raw_http.request(
        server.url,
        "POST",
        "/v1/keys",
        json.dumps({"role": role}).encode(),
        {"Authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert answer.status == 201, answer
    key: str = answer.json()["key"]
    return key


# -- typed errors ---------------------------------------------------------------------------


def test_no_key_or_a_wrong_key_is_unauthorized(secured: ServerProcess) -> None:
    for key in (None, "mqpy_000000000000_wrong"):
        with mqpy.Client(secured.url, key=key) as client, pytest.raises(mqpy.Unauthorized) as e:
            client.publish("x")
        assert e.value.status == 401 and e.value.slug == "unauthorized"
        assert "key" in e.value.detail
        assert isinstance(e.value, mqpy.MQError)


def test_forbidden_by_role_and_by_mode(secured: ServerProcess) -> None:
    publisher = create_key(secured, "publisher")
    with mqpy.Client(secured.url, key=publisher) as client:
        with pytest.raises(mqpy.Forbidden) as by_role:
            client.connect("receive", "http://127.0.0.1:9/hook")
        assert (by_role.value.status, by_role.value.slug) == (403, "forbidden")
        assert "subscriber" in by_role.value.detail
    with mqpy.Client(secured.url, key=ADMIN_KEY) as admin:
        receiver = admin.connect("receive", "http://127.0.0.1:9/hook")
        with pytest.raises(mqpy.Forbidden) as by_mode:
            admin.send(receiver.id, "a receiver cannot publish")
        assert by_mode.value.slug == "not-a-sender"


def test_an_unknown_connection_is_not_found(start_server: ServerFactory) -> None:
    server = start_server()
    with mqpy.Client(server.url) as client:
        for call in (lambda: client.send(4242, "x"), lambda: client.disconnect(4242)):
            with pytest.raises(mqpy.NotFound) as error:
                call()
            assert error.value.status == 404 and error.value.problem["id"] == 4242


def test_a_bad_request_is_invalid_with_its_field(start_server: ServerFactory) -> None:
    server = start_server("--max-message-bytes", "1024")
    with mqpy.Client(server.url) as client:
        with pytest.raises(mqpy.InvalidRequest) as bad_url:
            client.connect("receive", "ftp://example.com/hook")
        assert (bad_url.value.status, bad_url.value.field) == (400, "ClientURL")
        with pytest.raises(mqpy.InvalidRequest) as too_large:
            client.publish("x" * 2000)
        assert (too_large.value.status, too_large.value.slug) == (413, "body-too-large")


def test_an_unreachable_server_fails_to_connect() -> None:
    unreachable = f"http://127.0.0.1:{unused_port()}"
    with (
        mqpy.Client(unreachable, retries=2) as client,
        pytest.raises(mqpy.ConnectionFailed) as error,
    ):
        client.publish("x")
    assert error.value.status is None and error.value.request_sent is False
    assert "cannot reach" in str(error.value)


def test_the_constructor_refuses_a_url_it_cannot_use() -> None:
    for url in ("ftp://127.0.0.1", "127.0.0.1:8080", "http://127.0.0.1:x", "http://h/?q=1"):
        with pytest.raises(ValueError):
            mqpy.Client(url)


def test_an_answer_without_problem_json_still_gives_a_typed_error() -> None:
    error = error_from_answer(502, b"<html>Bad Gateway</html>")
    assert type(error) is mqpy.MQError and error.status == 502
    assert "Bad Gateway" in error.detail
    assert isinstance(error_from_answer(405, b""), mqpy.InvalidRequest)


# -- retries --------------------------------------------------------------------------------


def test_a_rate_limited_publish_waits_retry_after_and_succeeds(
    start_server: ServerFactory,
) -> None:
    server = start_server("--publish-rate", "1", "--publish-burst", "1")
    # One retry only: it can succeed only if the client waited as long as it was told.
    with mqpy.Client(server.url, retries=1) as client:
        started = time.monotonic()
        ids = [client.publish(f"message {n}") for n in range(3)]
        elapsed = time.monotonic() - started
    assert len(set(ids)) == 3
    assert elapsed >= 1.5, f"3 messages at 1/s took only {elapsed:.2f} s"


def test_without_retries_the_caller_gets_rate_limited(start_server: ServerFactory) -> None:
    server = start_server("--publish-rate", "0.2", "--publish-burst", "1")
    with mqpy.Client(server.url, retries=0) as client:
        client.publish("the burst")
        with pytest.raises(mqpy.RateLimited) as error:
            client.publish("one too many")
    assert error.value.status == 429 and error.value.slug == "rate-limited"
    assert error.value.retry_after is not None and error.value.retry_after >= 1


def test_a_retry_after_beyond_the_limit_is_not_waited_for(start_server: ServerFactory) -> None:
    server = start_server("--max-backlog", "1")
    wait_for_a_paused_subscription(server)
    with mqpy.Client(server.url, max_retry_wait=2.0) as client:
        client.publish("fills the backlog: it waits for the paused subscription")
        started = time.monotonic()
        with pytest.raises(mqpy.Unavailable) as error:
            client.publish("no room")
        assert time.monotonic() - started < 1.5
    assert (error.value.status, error.value.slug) == (503, "backlog-full")
    assert error.value.retry_after == 5


def wait_for_a_paused_subscription(server: ServerProcess) -> None:
    """A paused subscription to every topic: what is published waits for it (a
    message no subscription takes is done at once, and counts in no backlog)."""
    paused = {"url": "http://127.0.0.1:9/paused", "topic": ">", "paused": True}
    ok(call(server.url, "POST", "/v1/subscriptions", paused), 201)


async def test_the_async_client_starts_a_subscription_early_and_seeks(
    start_server: ServerFactory,
) -> None:
    server = start_server()
    async with mqpy.AsyncClient(server.url) as client:
        await client.publish("ledger", "before")
        sid = await client.create_pull_subscription(
            "ledger", start_at=datetime.now(UTC) - timedelta(hours=1)
        )
        (first,) = await client.pull(sid, wait_seconds=10)
        assert first.body == "before"
        await client.ack(sid, [first])
        sought = await client.seek(sid, "2000-01-01T00:00:00Z")
        assert (sought.due, sought.acked, sought.in_flight) == (1, 0, 0)
        (again,) = await client.pull(sid, wait_seconds=10)
        assert (again.message_id, again.attempt) == (first.message_id, 1)
        with pytest.raises(ValueError, match="time needs a timezone-aware datetime"):
            await client.seek(sid, datetime.now())


def test_a_send_whose_answer_was_lost_is_not_sent_again(
    start_server: ServerFactory, relay_factory: list[Relay]
) -> None:
    server = start_server()
    wait_for_a_paused_subscription(server)
    with mqpy.Client(server.url) as direct:
        sender = direct.connect("send")
    relay = Relay(server, lose_answers=1)
    relay_factory.append(relay)
    client = mqpy.Client(relay.url, retries=3)
    with client, pytest.raises(mqpy.ConnectionFailed) as error:
        client.send(sender.id, "stored, but the answer never came back")
    assert error.value.request_sent is True
    # Its only subscription is paused, so the message waits, counted once: not resent.
    assert figures(server)["queue length"] == 1
    assert relay.connections == 1


def test_an_idempotent_call_whose_answer_was_lost_is_retried(
    start_server: ServerFactory, relay_factory: list[Relay]
) -> None:
    server = start_server()
    relay = Relay(server, lose_answers=1)
    relay_factory.append(relay)
    with mqpy.Client(relay.url) as client:
        assert client.dead_letters() == []
        assert client.redrive() == 0
    assert relay.connections == 2


def test_retry_after_and_the_retry_policy() -> None:
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0

    policy = RetryPolicy(retries=2, max_wait=10)
    limited = mqpy.RateLimited("slow down", status=429, retry_after=3)
    assert policy.delay(1, limited, idempotent=False) == 3
    assert policy.delay(3, limited, idempotent=False) is None  # out of retries
    too_long = mqpy.Unavailable("full", status=503, retry_after=60)
    assert policy.delay(1, too_long, idempotent=True) is None
    lost = mqpy.ConnectionFailed("no answer", request_sent=True)
    assert policy.delay(1, lost, idempotent=False) is None
    delay = policy.delay(1, lost, idempotent=True)
    assert delay is not None and 0 <= delay <= 10
    refused = mqpy.ConnectionFailed("refused", request_sent=False)
    assert policy.delay(1, refused, idempotent=False) is not None
    assert policy.delay(1, mqpy.NotFound("gone", status=404), idempotent=True) is None


# -- connection reuse and the publish sender --------------------------------------------------


def test_calls_share_one_kept_alive_connection(
    start_server: ServerFactory, relay_factory: list[Relay]
) -> None:
    server = start_server()
    relay = Relay(server)
    relay_factory.append(relay)
    with mqpy.Client(relay.url) as client:
        for n in range(20):
            client.publish(f"message {n}")
        client.dead_letters()
    assert relay.connections == 1


def test_a_connection_the_server_closed_while_idle_is_replaced(
    start_server: ServerFactory, relay_factory: list[Relay]
) -> None:
    server = start_server("--idle-timeout", "1s")
    relay = Relay(server)
    relay_factory.append(relay)
    with mqpy.Client(relay.url, retries=0) as client:
        client.publish("before the server closes the idle connection")
        time.sleep(1.6)
        # retries=0: a send on the dead connection would raise ConnectionFailed.
        client.publish("after")
    assert relay.connections == 2


def test_publish_connects_one_sender_and_close_disconnects_it(
    start_server: ServerFactory,
) -> None:
    server = start_server()
    client = mqpy.Client(server.url)
    assert client.sender_id is None
    for n in range(3):
        client.publish(f"message {n}")
    assert client.sender_id is not None
    assert figures(server)["writers"] == 1
    client.close()
    assert figures(server)["writers"] == 0


# In a group a disconnect reaches the other processes within a second (docs/operations.md).
@pytest.mark.one_process
def test_publish_replaces_a_sender_that_was_disconnected(start_server: ServerFactory) -> None:
    server = start_server()
    with mqpy.Client(server.url) as client, mqpy.Client(server.url) as admin:
        client.publish("first")
        first_sender = client.sender_id
        assert first_sender is not None
        admin.disconnect(first_sender)
        client.publish("second")
        assert client.sender_id not in (None, first_sender)
        assert figures(server)["writers"] == 1


# -- AsyncClient ----------------------------------------------------------------------------


async def test_async_publishes_concurrently_from_one_sender(
    start_server: ServerFactory, relay_factory: list[Relay]
) -> None:
    server = start_server()
    relay = Relay(server)
    relay_factory.append(relay)
    async with mqpy.AsyncClient(relay.url) as client:
        ids = await asyncio.gather(*(client.publish(f"m{n}") for n in range(50)))
        assert len(set(ids)) == 50
        assert figures(server)["writers"] == 1
        before = relay.connections
        for n in range(5):  # one after another: the pool hands back the same connection
            await client.publish(f"sequential {n}")
        assert relay.connections == before
    assert figures(server)["writers"] == 0


async def test_async_publish_options_without_a_topic_are_a_type_error(
    start_server: ServerFactory,
) -> None:
    server = start_server()
    async with mqpy.AsyncClient(server.url) as client:
        with pytest.raises(TypeError, match="topic"):
            await client.publish("body", ordering_key="k")  # type: ignore[call-overload]
        assert client.sender_id is None  # nothing was sent
        assert await client.publish("body") is not None  # the body alone: the seed's way


async def test_async_typed_errors(secured: ServerProcess) -> None:
    async with mqpy.AsyncClient(secured.url) as anonymous:
        with pytest.raises(mqpy.Unauthorized):
            await anonymous.publish("x")
    async with mqpy.AsyncClient(secured.url, key=ADMIN_KEY) as client:
        with pytest.raises(mqpy.NotFound):
            await client.send(4242, "x")
        with pytest.raises(mqpy.InvalidRequest) as error:
            await client.connect("receive", "")
        assert error.value.field == "ClientURL"
    async with mqpy.AsyncClient(f"http://127.0.0.1:{unused_port()}", retries=1) as gone:
        with pytest.raises(mqpy.ConnectionFailed) as failed:
            await gone.dead_letters()
        assert failed.value.request_sent is False


async def test_async_rate_limited_publish_waits_and_succeeds(
    start_server: ServerFactory,
) -> None:
    server = start_server("--publish-rate", "1", "--publish-burst", "1")
    async with mqpy.AsyncClient(server.url, retries=1) as client:
        started = time.monotonic()
        await client.publish("first")
        await client.publish("second, after Retry-After")
        assert time.monotonic() - started >= 0.5


async def test_async_a_lost_send_is_not_sent_again(
    start_server: ServerFactory, relay_factory: list[Relay]
) -> None:
    server = start_server()
    wait_for_a_paused_subscription(server)
    async with mqpy.AsyncClient(server.url) as direct:
        sender = await direct.connect("send")
    relay = Relay(server, lose_answers=1)
    relay_factory.append(relay)
    async with mqpy.AsyncClient(relay.url, retries=3) as client:
        with pytest.raises(mqpy.ConnectionFailed) as error:
            await client.send(sender.id, "stored once")
    assert error.value.request_sent is True
    assert figures(server)["queue length"] == 1


# -- the receiver helper --------------------------------------------------------------------


async def test_serve_receiver_gets_checked_deliveries(start_server: ServerFactory) -> None:
    server = start_server(*FAST_RETRIES)
    arrived: asyncio.Queue[Delivery] = asyncio.Queue()
    receiver = await serve_receiver(arrived.put, path="/in")
    try:
        async with mqpy.AsyncClient(server.url) as client:
            connection = await client.connect("receive", receiver.url)
            assert connection.secret is not None
            receiver.secret = connection.secret
            body = 'ünïcode, "quotes" and\nlines'
            message_id = await client.publish(body)
            delivery = await asyncio.wait_for(arrived.get(), 10)
            await client.disconnect(connection.id)
    finally:
        await receiver.close()
    assert (delivery.message_id, delivery.body, delivery.attempt) == (message_id, body, 1)
    assert abs(delivery.timestamp - time.time()) < 60


async def test_serve_receiver_refuses_what_the_broker_did_not_sign() -> None:
    secret = generate_secret()
    handled: list[Delivery] = []

    async def handle(delivery: Delivery) -> None:
        handled.append(delivery)

    receiver = await serve_receiver(handle, secret=secret)
    payload = b'{"body":"hello"}'
    signed = {**webhook_headers([secret], "msg_1", int(time.time()), payload), "mq-attempt": "2"}
    attempts = [
        ({}, payload, 401),  # unsigned
        (webhook_headers([generate_secret()], "msg_1", int(time.time()), payload), payload, 401),
        (signed, b'{"body":"altered"}', 401),
        ({**signed, "webhook-timestamp": str(int(time.time()) - 3600)}, payload, 401),
        (webhook_headers([secret], "msg_2", int(time.time()), b"[1]"), b"[1]", 400),
        (signed, payload, 204),
    ]
    try:
        async with aiohttp.ClientSession() as http:
            for headers, body, expected in attempts:
                async with http.post(receiver.url, data=body, headers=headers) as response:
                    assert response.status == expected, (headers, body, await response.text())
    finally:
        await receiver.close()
    assert handled == [Delivery("msg_1", 2, int(signed["webhook-timestamp"]), "hello")]


async def test_serve_receiver_answers_the_verify_receivers_challenge(
    start_server: ServerFactory,
) -> None:
    server = start_server("--verify-receivers")
    arrived: asyncio.Queue[Delivery] = asyncio.Queue()
    receiver = await serve_receiver(arrived.put)
    try:
        async with mqpy.AsyncClient(server.url) as client:
            connection = await client.connect("receive", receiver.url)
            assert connection.secret is not None
            receiver.secret = connection.secret
            await client.publish("confirmed first")
            assert (await asyncio.wait_for(arrived.get(), 10)).body == "confirmed first"
            # Once it has its secret it confirms nobody else's subscription.
            with pytest.raises(mqpy.InvalidRequest) as refused:
                await client.connect("receive", receiver.url)
            assert refused.value.slug == "receiver-refused"
    finally:
        await receiver.close()


def test_delivery_from_request_reads_a_signed_delivery() -> None:
    secret, old = generate_secret(), generate_secret()
    payload = '{"body":"caf\u00e9"}'.encode()
    headers = {
        **webhook_headers([old], "msg_9", int(time.time()), payload),
        "Mq-Attempt": "3",
    }
    delivery = Delivery.from_request(payload, headers, [secret, old])
    assert (delivery.message_id, delivery.attempt, delivery.body) == ("msg_9", 3, "café")
    with pytest.raises(mqpy.InvalidSignature):
        Delivery.from_request(payload, headers, secret)
    del headers["Mq-Attempt"]
    with pytest.raises(InvalidDelivery):
        Delivery.from_request(payload, headers, old)


# -- topics: publish, batches, groups and filters --------------------------------------------


def stored_message(server: ServerProcess, message_id: str) -> dict[str, Any]:
    """The message as GET /v1/messages/{id} shows it."""
    answer = raw_http.request(server.url, "GET", f"/v1/messages/{message_id}")
    assert answer.status == 200, answer
    message: dict[str, Any] = answer.json()
    return message


def test_publish_to_a_topic_keeps_its_options(start_server: ServerFactory) -> None:
    server = start_server()
    later = datetime.now(UTC) + timedelta(hours=1)
    with mqpy.Client(server.url) as client:
        published = client.publish(
            "orders.eu",
            "order 17 created",
            attributes={"kind": "created", "region": "eu"},
            ordering_key="customer-42",
            deliver_at=later,
        )
        delayed = client.publish("orders.eu", "in a minute", delay_seconds=60)
        assert client.sender_id is None  # the native route needs no sender
    assert isinstance(published, Published)
    assert published.topic == "orders.eu" and published.duplicate is False
    assert MESSAGE_ID.fullmatch(published.id), published
    message = stored_message(server, published.id)
    assert message["topic"] == "orders.eu" and message["body"] == "order 17 created"
    assert message["attributes"] == {"kind": "created", "region": "eu"}
    assert message["ordering_key"] == "customer-42"
    assert message["deliver_at"].startswith(later.strftime("%Y-%m-%dT%H:%M"))
    assert stored_message(server, delayed.id)["deliver_at"] is not None


def test_an_idempotent_publish_is_stored_once(start_server: ServerFactory) -> None:
    server = start_server()
    wait_for_a_paused_subscription(server)
    with mqpy.Client(server.url) as client:
        first = client.publish("orders", "once", idempotency_key="order-17")
        again = client.publish("orders", "once", idempotency_key="order-17")
        other = client.publish("orders", "once", idempotency_key="order-18")
    assert (first.duplicate, again.duplicate, other.duplicate) == (False, True, False)
    assert again.id == first.id != other.id
    assert figures(server)["queue length"] == 2


def test_an_idempotent_publish_whose_answer_was_lost_is_retried(
    start_server: ServerFactory, relay_factory: list[Relay]
) -> None:
    server = start_server()
    wait_for_a_paused_subscription(server)
    relays = [Relay(server, lose_answers=1) for _ in range(2)]
    relay_factory.extend(relays)
    with mqpy.Client(relays[0].url, retries=3) as client:
        # The key makes a repeat harmless, so the lost answer is asked for again...
        published = client.publish("orders", "safe to repeat", idempotency_key="k-1")
        assert published.duplicate is True  # ...and the repeat found the first one
    with mqpy.Client(relays[1].url, retries=3) as client:
        # Without a key it is not repeated: the server may have stored it.
        with pytest.raises(mqpy.ConnectionFailed) as error:
            client.publish("orders", "not repeated")
        assert error.value.request_sent is True
    assert figures(server)["queue length"] == 2


def test_publish_options_without_a_topic_are_a_type_error(start_server: ServerFactory) -> None:
    server = start_server()
    with mqpy.Client(server.url) as client:
        with pytest.raises(TypeError, match="topic"):
            client.publish("body", attributes={"a": "b"})  # type: ignore[call-overload]
        with pytest.raises(ValueError, match="timezone"):
            client.publish("orders", "x", deliver_at=datetime(2030, 1, 1))
        assert client.sender_id is None  # nothing was sent


def test_publish_batch_gives_one_result_per_message(start_server: ServerFactory) -> None:
    server = start_server("--max-message-bytes", "1000")
    wait_for_a_paused_subscription(server)
    with mqpy.Client(server.url) as client:
        results = client.publish_batch(
            "events",
            [
                "plain",
                "x" * 2000,  # over --max-message-bytes: refused alone
                Message("with options", attributes={"kind": "a"}, idempotency_key="b-1"),
                Message("bad delay", delay_seconds=-1),
            ],
        )
        again = client.publish_batch("events", [Message("same key", idempotency_key="b-1")])
    first, too_big, with_options, bad_delay = results
    assert isinstance(first, Published) and isinstance(with_options, Published)
    assert first.topic == "events" and not first.duplicate
    assert isinstance(too_big, mqpy.InvalidRequest) and too_big.status == 413
    assert isinstance(bad_delay, mqpy.InvalidRequest) and bad_delay.status == 400
    assert "delay" in str(bad_delay)
    assert stored_message(server, with_options.id)["attributes"] == {"kind": "a"}
    [repeat] = again
    assert isinstance(repeat, Published) and repeat.duplicate
    assert repeat.id == with_options.id
    assert figures(server)["queue length"] == 2


def test_a_batch_the_broker_refuses_as_a_whole_raises(start_server: ServerFactory) -> None:
    server = start_server()
    with mqpy.Client(server.url) as client:
        for messages in ([], ["x"] * 1001):
            with pytest.raises(mqpy.InvalidRequest) as error:
                client.publish_batch("events", messages)
            assert error.value.status == 400
    assert figures(server)["queue length"] == 0


async def test_receivers_take_a_topic_as_groups_and_filters_say(
    start_server: ServerFactory,
) -> None:
    server = start_server(*FAST_RETRIES)
    members = [await Receiver().start() for _ in range(2)]
    everything, created_only, elsewhere = [await Receiver().start() for _ in range(3)]
    try:
        async with mqpy.AsyncClient(server.url) as client:
            for member in members:
                await client.connect("receive", member.url, topic="orders.*", group="billing")
            await client.connect("receive", everything.url, topic="orders.>")
            await client.connect(
                "receive", created_only.url, topic="orders.eu", filter={"kind": "created"}
            )
            await client.connect("receive", elsewhere.url, topic="payments")
            with pytest.raises(Conflict) as conflict:
                await client.connect(
                    "receive", everything.url, topic="orders.*", group="billing", filter={"a": "b"}
                )
            assert conflict.value.status == 409

            kinds = ["created", "paid"] * 5
            published = await client.publish_batch(
                "orders.eu", [Message(f"m{n}", attributes={"kind": k}) for n, k in enumerate(kinds)]
            )
            assert all(isinstance(p, Published) for p in published)
            await everything.wait_for(10)
            await created_only.wait_for(5)
            await asyncio.sleep(0.5)  # time for any delivery that should not happen
        assert sorted(str(r.text) for r in everything.received) == sorted(
            f"m{n}" for n in range(10)
        )
        assert [r.body["attributes"] for r in created_only.received] == [{"kind": "created"}] * 5
        assert elsewhere.received == []
        group = [r.text for member in members for r in member.received]
        assert sorted(str(t) for t in group) == sorted(f"m{n}" for n in range(10))
        assert everything.received[0].headers["mq-topic"] == "orders.eu"
    finally:
        for receiver in [*members, everything, created_only, elsewhere]:
            await receiver.stop()


async def test_async_publish_and_batch(start_server: ServerFactory) -> None:
    server = start_server()
    async with mqpy.AsyncClient(server.url) as client:
        one = await client.publish("events", "one", attributes={"n": "1"}, idempotency_key="a")
        again = await client.publish("events", "one", idempotency_key="a")
        batch = await client.publish_batch("events", ["two", Message("three", ordering_key="k")])
        sender = await client.connect("send", topic="events")
        sent = await client.send(sender.id, "four", attributes={"n": "4"}, topic="other")
        await client.disconnect(sender.id)
    assert (one.duplicate, again.duplicate, again.id) == (False, True, one.id)
    assert [type(result) for result in batch] == [Published, Published]
    message = stored_message(server, sent)
    assert (message["topic"], message["attributes"]) == ("other", {"n": "4"})
