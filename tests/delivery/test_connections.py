"""The delivery client's wire: kept-alive HTTP/1.1 connections, and every kind of answer
a receiver can give, good or broken.

Each receiver here is a real TCP server on 127.0.0.1 that reads real requests and
writes the bytes a test scripts, so answers no well-behaved HTTP server would give
(split, interim, oversized, garbled, cut short) can be tried.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from mqpy.delivery.connections import (
    MAX_BODY_BYTES,
    MAX_HEAD_BYTES,
    DeliveryFailed,
    ReceiverConnections,
)
from mqpy.delivery.guard import AddressPolicy

NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"


class ThenClose(bytes):
    """An answer after which the receiver closes the connection."""


@dataclass
class Request:
    connection: int  # which connection, counting from 0
    head: bytes
    body: bytes


# Given a request and how many came before it on its connection, the bytes to answer
# with, or None to close the connection without answering.
Script = Callable[[Request, int], bytes | None]


@dataclass
class ScriptedReceiver:
    script: Script
    requests: list[Request] = field(default_factory=list)
    connections: int = 0
    client_closed: asyncio.Event = field(default_factory=asyncio.Event)
    server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/hook?x=1"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = self.connections
        self.connections += 1
        served = 0
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    self.client_closed.set()
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                request = Request(number, head, await reader.readexactly(length))
                self.requests.append(request)
                answer = self.script(request, served)
                served += 1
                if answer is None:
                    return
                writer.write(answer)
                await writer.drain()
                if isinstance(answer, ThenClose):
                    return
        except ConnectionError:
            return
        finally:
            writer.close()


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[Script], ScriptedReceiver]]:
    made: list[ScriptedReceiver] = []

    def make(script: Script) -> ScriptedReceiver:
        made.append(ScriptedReceiver(script))
        return made[-1]

    yield make
    for receiver in made:
        if receiver.server is not None:
            receiver.server.close()


async def start(receiver: ScriptedReceiver) -> ScriptedReceiver:
    receiver.server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0)
    return receiver


@pytest.fixture
async def connections() -> AsyncIterator[ReceiverConnections]:
    made = ReceiverConnections(AddressPolicy(), user_agent="mq-py/test")
    yield made
    await made.close()


async def post(
    connections: ReceiverConnections, url: str, body: bytes = b'{"body":"hi"}', keep: int = 0
) -> tuple[int, str | None, bytes]:
    answer = await connections.post(
        url, body, [("Content-Type", "application/json")], timeout=5, keep_body=keep
    )
    return answer.status, answer.retry_after, answer.body


async def test_requests_reuse_one_kept_alive_connection(
    scripted: Callable[[Script], ScriptedReceiver], connections: ReceiverConnections
) -> None:
    receiver = await start(scripted(lambda request, served: NO_CONTENT))
    for n in range(5):
        assert await post(connections, receiver.url, b'{"body":"%d"}' % n) == (204, None, b"")
    assert receiver.connections == 1
    assert [r.body for r in receiver.requests] == [b'{"body":"%d"}' % n for n in range(5)]
    head = receiver.requests[0].head.decode()
    port = receiver.url.split(":")[2].split("/")[0]
    assert head.startswith("POST /hook?x=1 HTTP/1.1\r\n")
    assert f"\r\nHost: 127.0.0.1:{port}\r\n" in head
    assert "\r\nUser-Agent: mq-py/test\r\n" in head
    assert "\r\nContent-Length: 12\r\n" in head


async def test_concurrent_requests_each_get_a_connection_then_share_them(
    scripted: Callable[[Script], ScriptedReceiver], connections: ReceiverConnections
) -> None:
    receiver = await start(scripted(lambda request, served: NO_CONTENT))
    for _ in range(3):
        answers = await asyncio.gather(*(post(connections, receiver.url) for _ in range(4)))
        assert [status for status, _, _ in answers] == [204] * 4
    assert receiver.connections == 4


async def test_close_ends_idle_connections(
    scripted: Callable[[Script], ScriptedReceiver],
) -> None:
    receiver = await start(scripted(lambda request, served: NO_CONTENT))
    connections = ReceiverConnections(AddressPolicy())
    await post(connections, receiver.url)
    await connections.close()
    async with asyncio.timeout(5):
        await receiver.client_closed.wait()


async def test_a_connection_gone_stale_while_idle_is_replaced_and_the_request_sent_again(
    scripted: Callable[[Script], ScriptedReceiver], connections: ReceiverConnections
) -> None:
    # The first connection serves one request, then closes as the second arrives, the
    # race a receiver's idle timeout can cause.
    receiver = await start(
        scripted(lambda request, served: None if request.connection == 0 and served else NO_CONTENT)
    )
    assert (await post(connections, receiver.url, b"1"))[0] == 204
    assert (await post(connections, receiver.url, b"2"))[0] == 204
    assert receiver.connections == 2
    assert [(r.connection, r.body) for r in receiver.requests] == [(0, b"1"), (0, b"2"), (1, b"2")]


async def test_a_new_connection_closed_without_an_answer_fails_once(
    scripted: Callable[[Script], ScriptedReceiver], connections: ReceiverConnections
) -> None:
    receiver = await start(scripted(lambda request, served: None))
    with pytest.raises(DeliveryFailed, match="closed the connection without answering"):
        await post(connections, receiver.url)
    assert len(receiver.requests) == 1, "a fresh connection is not tried twice"


async def test_an_answer_cut_short_fails_and_is_not_sent_again(
    scripted: Callable[[Script], ScriptedReceiver], connections: ReceiverConnections
) -> None:
    receiver = await start(scripted(lambda request, served: ThenClose(b"HTTP/1.1 20")))
    with pytest.raises(DeliveryFailed, match="in the middle of its answer"):
        await post(connections, receiver.url)
    assert len(receiver.requests) == 1


async def test_retry_after_and_status_come_back(
    scripted: Callable[[Script], ScriptedReceiver], connections: ReceiverConnections
) -> None:
    answer = b"HTTP/1.1 503 Busy\r\nRetry-After: 7\r\nContent-Length: 4\r\n\r\nbusy"
    receiver = await start(scripted(lambda request, served: answer))
    assert await post(connections, receiver.url) == (503, "7", b"")
    assert await post(connections, receiver.url, keep=2) == (503, "7", b"bu")
    assert receiver.connections == 1


async def test_an_interim_answer_is_passed_over(
    scripted: Callable[[Script], ScriptedReceiver], connections: ReceiverConnections
) -> None:
    answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    receiver = await start(scripted(lambda request, served: answer))
    assert await post(connections, receiver.url, keep=10) == (200, None, b"ok")
    assert await post(connections, receiver.url) == (200, None, b"")
    assert receiver.connections == 1


async def test_a_chunked_answer_is_drained_and_the_connection_reused(
    scripted: Callable[[Script], ScriptedReceiver], connections: ReceiverConnections
) -> None:
    answer = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    receiver = await start(scripted(lambda request, served: answer))
    assert await post(connections, receiver.url, keep=100) == (200, None, b"hello world")
    assert await post(connections, receiver.url) == (200, None, b"")
    assert receiver.connections == 1


async def test_an_answer_running_to_the_end_of_the_connection_counts(
    scripted: Callable[[Script], ScriptedReceiver], connections: ReceiverConnections
) -> None:
    answer = ThenClose(b"HTTP/1.0 202 Accepted\r\n\r\nthe rest of the stream")
    receiver = await start(scripted(lambda request, served: answer))
    assert await post(connections, receiver.url, keep=7) == (202, None, b"the res")
    assert (await post(connections, receiver.url))[0] == 202
    assert receiver.connections == 2, "an answer without a length cannot share its connection"


async def test_connection_close_is_honoured(
    scripted: Callable[[Script], ScriptedReceiver], connections: ReceiverConnections
) -> None:
    answer = b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"
    receiver = await start(scripted(lambda request, served: answer))
    for _ in range(3):
        assert (await post(connections, receiver.url))[0] == 204
    assert receiver.connections == 3


async def test_a_huge_answer_body_is_dropped_not_read(
    scripted: Callable[[Script], ScriptedReceiver], connections: ReceiverConnections
) -> None:
    size = 8 * MAX_BODY_BYTES
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"x" * size
    receiver = await start(scripted(lambda request, served: answer))
    assert (await post(connections, receiver.url))[0] == 200
    assert (await post(connections, receiver.url))[0] == 200
    assert receiver.connections == 2, "the first connection was dropped mid-body"


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        (b"SMTP ready\r\n\r\n", "not valid HTTP"),
        (b"HTTP/1.1 200 OK\r\nX-Big: " + b"y" * MAX_HEAD_BYTES + b"\r\n\r\n", "exceed 64 KiB"),
        (b"HTTP/1.1 101 Switching\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n", "switched"),
    ],
    ids=["not-http", "huge-head", "upgrade"],
)
async def test_broken_answers_fail_with_a_reason(
    scripted: Callable[[Script], ScriptedReceiver],
    connections: ReceiverConnections,
    answer: bytes,
    words: str,
) -> None:
    receiver = await start(scripted(lambda request, served: answer))
    with pytest.raises(DeliveryFailed, match=words):
        await post(connections, receiver.url)
    # The next request gets a fresh connection, and the same reason.
    with pytest.raises(DeliveryFailed, match=words):
        await post(connections, receiver.url)
    assert receiver.connections == 2


async def test_nobody_listening_reads_as_cannot_connect(connections: ReceiverConnections) -> None:
    with pytest.raises(DeliveryFailed) as failed:
        await post(connections, "http://127.0.0.1:9/hook")
    assert failed.value.reason == "cannot connect to 127.0.0.1:9: Connection refused"


async def test_a_header_with_a_line_break_is_refused(connections: ReceiverConnections) -> None:
    with pytest.raises(ValueError, match="line break"):
        await connections.post(
            "http://127.0.0.1:9/hook", b"", [("mq-topic", "a\r\nX: y")], timeout=5
        )


async def test_credentials_in_the_url_go_as_basic_auth(
    scripted: Callable[[Script], ScriptedReceiver], connections: ReceiverConnections
) -> None:
    receiver = await start(scripted(lambda request, served: NO_CONTENT))
    url = receiver.url.replace("http://", "http://hook%40svc:p%C3%A4ss@")
    assert (await post(connections, url))[0] == 204
    head = receiver.requests[0].head.decode("latin-1")
    assert head.startswith("POST /hook?x=1 HTTP/1.1\r\n"), "no credentials on the line"
    # base64 of "hook@svc:päss" in Latin-1, as aiohttp and curl send it.
    assert "\r\nAuthorization: Basic aG9va0BzdmM6cORzcw==\r\n" in head


async def test_an_answer_late_past_the_timeout_raises_and_its_connection_is_closed(
    scripted: Callable[[Script], ScriptedReceiver], connections: ReceiverConnections
) -> None:
    # The first connection's first request gets no answer at all (and the connection
    # stays open); every other request is answered at once.
    receiver = await start(
        scripted(lambda r, served: b"" if r.connection == 0 and served == 0 else NO_CONTENT)
    )
    started = asyncio.get_running_loop().time()
    with pytest.raises(TimeoutError):
        await connections.post(receiver.url, b"{}", [], timeout=0.3)
    waited = asyncio.get_running_loop().time() - started
    assert 0.3 <= waited < 2, waited
    async with asyncio.timeout(5):
        await receiver.client_closed.wait()  # the hung connection is not kept for reuse
    assert (await post(connections, receiver.url))[0] == 204
    assert receiver.connections == 2
