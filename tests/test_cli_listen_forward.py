"""`mqpy listen --forward-to`, run as a real process against a real server, forwarding to
a real local receiver that checks every delivery's signature with `mqpy.verify`: each
message arrives as a push delivery would, is acked on a 2xx, and comes again after a
failure; with --format the receiver gets CloudEvents the SDK parses."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import aiohttp
import pytest
from aiohttp import web
from cloudevents.core.bindings.http import HTTPMessage, from_http_event

import mqpy
from mqpy.wire.signing import generate_secret
from tests.conftest import ReceiverFactory
from tests.support.load import FAST_RETRIES, unused_port
from tests.support.server import ServerProcess
from tests.test_cli_publish_listen import Listener, listeners  # noqa: F401 (a fixture)

# One line per message: time, status, milliseconds, message id, attempt, topic.
# After a failure, why and when it comes again.
_LINE = re.compile(
    r"\d\d:\d\d:\d\d (\d{3}|---) \d+ ms (msg_[0-9a-f]{32}) attempt (\d+) ([^\s:]+)(: .+)?"
)


class Checking:
    """A receiver's behaviour: refuse (401) what does not verify with `secret`, answer
    the first `failures` good deliveries with 500 and the rest with 204."""

    def __init__(self, secret: str, failures: int = 0) -> None:
        self.secret = secret
        self.failures = failures
        self.verified: list[tuple[dict[str, str], bytes]] = []

    async def __call__(self, request: web.Request, number: int) -> web.StreamResponse:
        body = await request.read()
        try:
            mqpy.verify(body, request.headers, self.secret)
        except mqpy.InvalidSignature:
            return web.Response(status=401)
        self.verified.append((dict(request.headers), body))
        return web.Response(status=500 if len(self.verified) <= self.failures else 204)


@pytest.fixture
def server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_server(*FAST_RETRIES)


async def publish(http: aiohttp.ClientSession, server: ServerProcess, topic: str, body: str) -> str:
    async with http.post(f"{server.url}/v1/topics/{topic}/messages", json={"body": body}) as answer:
        assert answer.status == 201, await answer.text()
        return str((await answer.json())["id"])


async def lines(listener: Listener, count: int) -> list[re.Match[str]]:
    got = await asyncio.to_thread(listener.next_lines, count)
    found = [_LINE.fullmatch(line) for line in got]
    assert all(found), got
    return [m for m in found if m is not None]


async def started(start: Callable[..., Listener], *args: str) -> Listener:
    return await asyncio.to_thread(start, *args)


async def test_every_message_reaches_the_local_receiver_signed_and_is_acked(
    server: ServerProcess,
    listeners: Callable[..., Listener],  # noqa: F811
    start_receiver: ReceiverFactory,
    http: aiohttp.ClientSession,
) -> None:
    secret = generate_secret()
    checking = Checking(secret)
    receiver = await start_receiver(checking)
    args = ("--url", server.url, "--topic", "orders", "--forward-to", receiver.url)
    listener = await started(listeners, *args, "--secret", secret)
    ids = [await publish(http, server, "orders", f"order {n}") for n in range(5)]
    reported = await lines(listener, 5)
    assert sorted(m.group(2) for m in reported) == sorted(ids)
    assert {(m.group(1), m.group(3), m.group(4)) for m in reported} == {("204", "1", "orders")}
    await receiver.wait_for(5)
    bodies = {h["webhook-id"]: body for h, body in checking.verified}
    assert {i: bodies[i] for i in ids} == {i: b'{"body":"order %d"}' % n for n, i in enumerate(ids)}
    assert all(h["mq-topic"] == "orders" and h["mq-attempt"] == "1" for h, _ in checking.verified)
    # All acked: nothing comes again, and stopping deletes the subscription.
    assert await asyncio.to_thread(listener.stop) == 0
    assert len(receiver.attempts) == 5


async def test_a_message_the_receiver_failed_comes_again(
    server: ServerProcess,
    listeners: Callable[..., Listener],  # noqa: F811
    start_receiver: ReceiverFactory,
    http: aiohttp.ClientSession,
) -> None:
    checking = Checking(secret="", failures=1)
    receiver = await start_receiver(checking)
    args = ("--url", server.url, "--topic", "jobs", "--forward-to", receiver.url)
    listener = await started(listeners, *args)
    # Without --secret, the broker made the subscription's secret and listen printed it.
    said = await asyncio.to_thread(listener.said, "signing secret: ")
    printed_secret = re.search(r"signing secret: (whsec_\S+)", said)
    assert printed_secret, said
    checking.secret = printed_secret.group(1)
    message_id = await publish(http, server, "jobs", "try twice")
    first, second = await lines(listener, 2)
    assert (first.group(1), first.group(2), first.group(3)) == ("500", message_id, "1")
    assert (second.group(1), second.group(2), second.group(3)) == ("204", message_id, "2")
    assert first.group(5) == ": HTTP 500; again in 1 s"
    assert [h["mq-attempt"] for h, _ in checking.verified] == ["1", "2"]
    assert len(receiver.attempts) == 2  # every delivery verified


@pytest.mark.parametrize("mode", ["cloudevents-binary", "cloudevents-structured"])
async def test_a_format_forwards_cloudevents(
    mode: str,
    server: ServerProcess,
    listeners: Callable[..., Listener],  # noqa: F811
    start_receiver: ReceiverFactory,
    http: aiohttp.ClientSession,
) -> None:
    secret = generate_secret()
    checking = Checking(secret)
    receiver = await start_receiver(checking)
    args = ("--url", server.url, "--topic", "ce", "--forward-to", receiver.url, "--format", mode)
    listener = await started(listeners, *args, "--secret", secret)
    message_id = await publish(http, server, "ce", '{"n": 1}')
    await lines(listener, 1)
    [(headers, body)] = checking.verified
    event = from_http_event(HTTPMessage(headers=headers, body=body))
    assert (event.get_id(), event.get_subject(), event.get_data()) == (message_id, "ce", {"n": 1})


async def test_a_receiver_that_is_down_is_said_and_tried_again(
    server: ServerProcess,
    listeners: Callable[..., Listener],  # noqa: F811
    http: aiohttp.ClientSession,
) -> None:
    port = unused_port()
    args = ("--url", server.url, "--topic", "down", "--forward-to", f"http://127.0.0.1:{port}/")
    listener = await started(listeners, *args)
    message_id = await publish(http, server, "down", "anyone there?")
    first, second = await lines(listener, 2)
    for line, attempt in ((first, "1"), (second, "2")):
        assert (line.group(1), line.group(2), line.group(3)) == ("---", message_id, attempt)
    refused = f": cannot connect to 127.0.0.1:{port}: Connection refused; again in"
    assert first.group(5) == f"{refused} 1 s" and second.group(5) == f"{refused} 2 s"
