"""The fast lane (api/fast_lane.py) answers plain publishes itself and hands anything
else, with the connection, to aiohttp: what a client sees must not tell them apart.

Raw sockets, so that the tests choose how bytes arrive: several requests in one write
(pipelined), one request split over two writes, HTTP/1.0, `Connection: close`.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import ServerFactory
from tests.support.server import ServerProcess

TIMEOUT = 10.0


@dataclass
class Answer:
    version: str
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Connection:
    """One keep-alive connection to the broker, written to and read from by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, server: ServerProcess) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self) -> Answer:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        status_line, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
        version, status, _ = status_line.split(" ", 2)
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers["content-length"])
        body = await asyncio.wait_for(self.reader.readexactly(length), TIMEOUT)
        return Answer(version, int(status), headers, body)

    async def closed_by_server(self) -> bool:
        """Whether the server closes the connection (within TIMEOUT) without more."""
        return await asyncio.wait_for(self.reader.read(1), TIMEOUT) == b""

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def post(path: str, body: Any, *, version: str = "1.1", headers: str = "") -> bytes:
    data = json.dumps(body).encode()
    return (
        f"POST {path} HTTP/{version}\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"{headers}Content-Length: {len(data)}\r\n\r\n"
    ).encode() + data


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


async def sender_of(connection: Connection) -> int:
    await connection.send(post("/connect", {"mode": "send", "ClientURL": ""}))
    answer = await connection.answer()
    assert answer.status == 200, answer.body
    sender_id: int = answer.json()["id"]
    return sender_id


async def body_of(connection: Connection, message_id: str) -> str:
    await connection.send(get(f"/v1/messages/{message_id}"))
    answer = await connection.answer()
    assert answer.status == 200, answer.body
    body: str = answer.json()["body"]
    return body


async def test_pipelined_publishes_and_other_requests_are_answered_in_order(
    server: ServerProcess,
) -> None:
    connection = await Connection.open(server)
    sender = await sender_of(connection)
    # One write of three plain publishes, which the lane answers; then one with a
    # request only aiohttp serves, which takes the connection from there.
    await connection.send(
        post("/send", {"id": sender, "body": "first"})
        + post("/send/", {"id": sender, "body": "second"})
        + post("/v1/topics/default/messages", {"body": "third"})
    )
    await connection.send(get("/healthz") + post("/send", {"id": sender, "body": "fourth"}))
    answers = [await connection.answer() for _ in range(5)]
    assert [a.status for a in answers] == [200, 200, 201, 200, 200]
    ids = [a.json().get("message_id") or a.json().get("id") for a in answers]
    bodies = [await body_of(connection, ids[i]) for i in (0, 1, 2, 4)]
    assert bodies == ["first", "second", "third", "fourth"]
    await connection.close()


async def test_a_connection_goes_on_after_a_request_the_lane_hands_over(
    server: ServerProcess,
) -> None:
    connection = await Connection.open(server)
    sender = await sender_of(connection)
    await connection.send(post("/send", {"id": sender, "body": "before"}))
    assert (await connection.answer()).status == 200
    # A request split over two writes, as a slow client or a large body arrives.
    request = post("/send", {"id": sender, "body": "split"})
    await connection.send(request[:30])
    await asyncio.sleep(0.2)
    await connection.send(request[30:])
    split = await connection.answer()
    assert split.status == 200, split.body
    await connection.send(get("/v1/status"))
    assert (await connection.answer()).status == 200
    await connection.send(post("/send", {"id": sender, "body": "after"}))
    after = await connection.answer()
    assert after.status == 200
    assert await body_of(connection, split.json()["message_id"]) == "split"
    assert await body_of(connection, after.json()["message_id"]) == "after"
    await connection.close()


async def served_by(server: ServerProcess) -> dict[str, float]:
    """`mqpy_http_requests_total` by what served the requests (the scrape itself not
    yet counted), read on a connection of its own."""
    connection = await Connection.open(server)
    await connection.send(get("/metrics"))
    text = (await connection.answer()).body.decode()
    await connection.close()
    counts = {"fast_lane": 0.0, "aiohttp": 0.0}
    for line in text.splitlines():
        match = re.fullmatch(r'mqpy_http_requests_total\{served_by="(\w+)"\} (\S+)', line)
        if match:
            counts[match.group(1)] = float(match.group(2))
    return counts


async def test_a_connection_comes_back_to_the_lane_after_aiohttp_answered(
    server: ServerProcess,
) -> None:
    connection = await Connection.open(server)
    sender = await sender_of(connection)
    await connection.send(get("/v1/status"))  # only aiohttp serves it
    assert (await connection.answer()).status == 200
    await asyncio.sleep(0.1)  # aiohttp lets go a few turns of the loop after answering
    before = await served_by(server)
    for n in range(5):
        await connection.send(post("/send", {"id": sender, "body": f"back {n}"}))
        assert (await connection.answer()).status == 200
    # In a group, another process's counts reach a scrape within a tenth of a second.
    await asyncio.sleep(0.3)
    after = await served_by(server)
    assert after["fast_lane"] - before["fast_lane"] == 5
    assert after["aiohttp"] - before["aiohttp"] == 1  # the first scrape
    await connection.close()


async def test_bad_publishes_get_problems_and_the_connection_stays_usable(
    server: ServerProcess,
) -> None:
    connection = await Connection.open(server)
    sender = await sender_of(connection)
    broken = b'{"id": 1, "body": '
    await connection.send(
        b"POST /send HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(broken), broken)
    )
    answer = await connection.answer()
    assert answer.status == 400
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["instance"] == "/send"
    await connection.send(post("/send", {"id": 999_999, "body": "nobody sends this"}))
    unknown = await connection.answer()
    assert unknown.status == 404
    assert unknown.json()["type"].endswith("/unknown-connection")
    await connection.send(post("/v1/topics/no%20such/messages", {"body": "x"}))
    assert (await connection.answer()).status == 400  # handed over: a topic with a space
    hostless = post("/send", {"id": sender, "body": "x"}).replace(b"Host: 127.0.0.1\r\n", b"")
    await connection.send(hostless)
    missing_host = await connection.answer()  # aiohttp's answer: HTTP/1.1 needs a Host
    assert missing_host.status == 400
    assert "Host" in missing_host.json()["detail"]
    await connection.close()  # aiohttp closes a connection after malformed HTTP
    connection = await Connection.open(server)
    await connection.send(post("/send", {"id": sender, "body": "still here"}))
    assert (await connection.answer()).status == 200
    await connection.close()


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(lambda s: post("/send", {"id": s, "body": "x"}), id="seed"),
        pytest.param(lambda s: post("/v1/topics/default/messages", {"body": "x"}), id="native"),
        pytest.param(lambda s: post("/send", {"id": s, "body": 5}), id="wrong-type"),
        pytest.param(lambda s: post("/send", {"id": s + 1, "body": "x"}), id="unknown-sender"),
        pytest.param(
            lambda s: post("/v1/topics/default/messages", {"messages": [{"body": "x"}, {}]}),
            id="batch",
        ),
    ],
)
async def test_the_lane_answers_as_aiohttp_does(server: ServerProcess, request_bytes: Any) -> None:
    """The same request, plain (the lane answers it) and with a chunked body (which
    the lane hands to aiohttp): the same status, headers and body shape."""
    connection = await Connection.open(server)
    sender = await sender_of(connection)
    plain: bytes = request_bytes(sender)
    head, _, body = plain.partition(b"\r\n\r\n")
    head = b"\r\n".join(
        line for line in head.split(b"\r\n") if not line.startswith(b"Content-Length")
    )
    chunked = head + b"\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (
        len(body),
        body,
    )
    await connection.send(plain)
    by_lane = await connection.answer()
    await connection.send(chunked)
    by_aiohttp = await connection.answer()
    assert by_lane.version == by_aiohttp.version == "HTTP/1.1"
    assert by_lane.status == by_aiohttp.status
    assert set(by_lane.headers) == set(by_aiohttp.headers)
    for name in ("content-type", "server", "connection"):
        assert by_lane.headers.get(name) == by_aiohttp.headers.get(name)
    lane, other = by_lane.json(), by_aiohttp.json()
    assert set(lane) == set(other)
    for moving in ("id", "message_id", "results"):  # ids differ between two publishes
        lane.pop(moving, None)
        other.pop(moving, None)
    assert lane == other
    await connection.close()


async def test_http_1_0_and_connection_close_are_honoured(server: ServerProcess) -> None:
    connection = await Connection.open(server)
    sender = await sender_of(connection)
    await connection.send(post("/send", {"id": sender, "body": "x"}, version="1.0"))
    answer = await connection.answer()
    assert (answer.version, answer.status) == ("HTTP/1.0", 200)
    assert await connection.closed_by_server()
    await connection.close()

    connection = await Connection.open(server)
    request = post("/send", {"id": sender, "body": "x"}, headers="Connection: close\r\n")
    await connection.send(request)
    answer = await connection.answer()
    assert answer.headers["connection"] == "close"
    assert await connection.closed_by_server()
    await connection.close()

    connection = await Connection.open(server)
    keep = "Connection: keep-alive\r\n"
    for _ in range(2):
        await connection.send(
            post("/send", {"id": sender, "body": "x"}, version="1.0", headers=keep)
        )
        answer = await connection.answer()
        assert answer.status == 200
        assert answer.headers["connection"] == "keep-alive"
    await connection.close()


async def test_an_idle_connection_is_closed_after_the_idle_timeout(
    start_server: ServerFactory,
) -> None:
    server = start_server("--idle-timeout", "1s")
    connection = await Connection.open(server)
    sender = await sender_of(connection)
    await connection.send(post("/send", {"id": sender, "body": "x"}))
    assert (await connection.answer()).status == 200
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await connection.closed_by_server()
    assert 0.5 <= loop.time() - started < TIMEOUT
    await connection.close()
