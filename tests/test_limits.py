"""Limits and backpressure through the real server: each limit answers with the right
status (429 or 503 with Retry-After, 4xx for oversized requests, a closed connection
for a client too slow to send its request) and nothing already accepted is lost."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp
import pytest

from tests.conftest import ReceiverFactory, ServerFactory
from tests.support import raw_http
from tests.support.client import SeedClient
from tests.support.load import FAST_RETRIES, wait_for_ids
from tests.support.problems import check_problem
from tests.support.server import ServerProcess

ADMIN_KEY = "test-admin-key-for-limits"
# How long a test waits for something that must happen (a closed connection, an
# answer); generous, since only "it happens" is asserted, never how fast.
DEADLINE = 15.0


async def send(client: SeedClient, sender_id: int, body: str) -> tuple[int, dict[str, str], bytes]:
    """POST /send without insisting on a 200: the status, headers and raw body."""
    async with client.http.post(
        client.base_url + "/send", json={"id": sender_id, "body": body}
    ) as response:
        return response.status, dict(response.headers), await response.read()


def retry_after(headers: dict[str, str]) -> int:
    """The Retry-After header, which must be a whole number of seconds, at least 1."""
    value = headers.get("Retry-After", "")
    assert value.isascii() and value.isdigit(), f"Retry-After {value!r} is not delta-seconds"
    assert int(value) >= 1, value
    return int(value)


def check_limited(status: int, headers: dict[str, str], body: bytes, expected: int) -> int:
    content_type = headers.get("Content-Type", "").split(";")[0].strip()
    check_problem(status, content_type, body, expected)
    return retry_after(headers)


# Publish rate.


async def test_a_burst_past_the_publish_rate_gets_429_with_retry_after(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = start_server("--publish-rate", "5", "--publish-burst", "5")
    client = SeedClient(http, server.url)
    sender = await client.connect_sender()
    answers = await asyncio.gather(*(send(client, sender, f"burst {n}") for n in range(20)))
    statuses = [status for status, _, _ in answers]
    assert statuses.count(200) >= 5, statuses  # the burst itself is allowed
    assert statuses.count(429) >= 1, statuses
    assert set(statuses) <= {200, 429}, statuses
    waits = [check_limited(*answer, expected=429) for answer in answers if answer[0] == 429]

    # Obeying Retry-After is enough to be let in again.
    await asyncio.sleep(max(waits))
    status, _, body = await send(client, sender, "after waiting")
    assert status == 200, (status, body)


async def test_a_client_that_obeys_retry_after_gets_through(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = start_server("--publish-rate", "5", "--publish-burst", "5")
    client = SeedClient(http, server.url)
    sender = await client.connect_sender()
    for n in range(20):
        status, headers, body = await send(client, sender, f"until refused {n}")
        if status == 429:
            break
        assert status == 200, (status, body)
    else:
        pytest.fail("20 sends in a row at --publish-rate 5 --publish-burst 5 were never limited")
    await asyncio.sleep(check_limited(status, headers, body, 429))
    status, _, body = await send(client, sender, "after Retry-After")
    assert status == 200, (status, body)


@pytest.fixture
def keyed_server(start_server: ServerFactory) -> ServerProcess:
    # A slow refill (one message per 10 s) so a shared bucket could not hide behind it.
    return start_server(
        "--publish-rate", "0.1", "--publish-burst", "5", env={"MQPY_ADMIN_KEY": ADMIN_KEY}
    )


async def create_publisher(http: aiohttp.ClientSession, base_url: str) -> str:
    async with http.post(
        base_url + "/v1/keys",
        json={"role": "publisher"},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    ) as response:
        data = await response.json()
        assert response.status == 201, data
        return str(data["key"])


async def test_the_publish_rate_is_per_key(
    keyed_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    keys = [await create_publisher(http, keyed_server.url) for _ in range(2)]
    for key in keys:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
            client = SeedClient(session, keyed_server.url)
            sender = await client.connect_sender()
            statuses = [(await send(client, sender, f"{n}"))[0] for n in range(6)]
            # Each key has its own burst of 5, whatever the other key already spent.
            assert statuses == [200] * 5 + [429], (key[:8], statuses)


# Backlog.


async def test_a_full_backlog_answers_503_and_loses_nothing_accepted(
    start_server: ServerFactory, start_receiver: ReceiverFactory, http: aiohttp.ClientSession
) -> None:
    server = start_server("--max-backlog", "10", *FAST_RETRIES)
    client = SeedClient(http, server.url)
    receiver = await start_receiver()
    # Paused, so what is published waits for it: a message nobody takes is no backlog.
    async with http.post(
        server.url + "/v1/subscriptions", json={"url": receiver.url, "paused": True}
    ) as response:
        assert response.status == 201
        subscription = (await response.json())["id"]
    sender = await client.connect_sender()
    accepted = {}
    for n in range(10):
        answer = await client.send(sender, f"backlog {n}")
        accepted[answer["message_id"]] = f"backlog {n}"

    status, headers, body = await send(client, sender, "one too many")
    check_limited(status, headers, body, 503)

    async with http.post(f"{server.url}/v1/subscriptions/{subscription}/resume") as response:
        assert response.status == 200
    counts = await wait_for_ids(receiver, accepted, timeout=30)
    assert counts.keys() == accepted.keys()
    assert {record.text for record in receiver.received} == set(accepted.values())

    # Delivered messages leave the backlog: sending works again.
    deadline = time.monotonic() + DEADLINE
    while True:
        status, headers, body = await send(client, sender, "room again")
        if status == 200:
            break
        check_limited(status, headers, body, 503)
        assert time.monotonic() < deadline, "sends stayed refused after the backlog drained"
        await asyncio.sleep(0.2)
    await receiver.wait_for(11)
    assert receiver.received[-1].text == "room again"


# Request size.


@pytest.fixture
def small_limits(start_server: ServerFactory) -> ServerProcess:
    return start_server("--max-header-bytes", "1024", "--max-url-bytes", "1024")


def still_serving(server: ServerProcess) -> None:
    assert server.running
    response = raw_http.request(server.url, "GET", "/dashboard")
    assert response.status == 200


def test_a_header_over_max_header_bytes_is_refused_and_the_server_stays_up(
    small_limits: ServerProcess,
) -> None:
    fine = raw_http.request(small_limits.url, "GET", "/dashboard", headers={"X-Pad": "a" * 500})
    assert fine.status == 200
    response = raw_http.request(
        small_limits.url, "GET", "/dashboard", headers={"X-Pad": "a" * 2000}
    )
    assert response.status in (400, 431), response
    still_serving(small_limits)


def test_a_url_over_max_url_bytes_is_refused_and_the_server_stays_up(
    small_limits: ServerProcess,
) -> None:
    fine = raw_http.request(small_limits.url, "GET", "/dashboard?pad=" + "a" * 500)
    assert fine.status == 200
    response = raw_http.request(small_limits.url, "GET", "/dashboard?pad=" + "a" * 2000)
    assert response.status in (400, 414), response
    still_serving(small_limits)


# Slow clients.


@contextmanager
def raw_connection(server: ServerProcess) -> Iterator[socket.socket]:
    with socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE) as sock:
        yield sock


def read_until_closed(sock: socket.socket, deadline: float) -> bytes:
    """Everything the server sends until it closes the connection; fails the test if it
    is still open at `deadline` (a time.monotonic() value)."""
    received = b""
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            pytest.fail(f"the server kept the connection open; it sent {received[:200]!r}")
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk


def test_a_client_that_stops_mid_request_line_is_disconnected(
    start_server: ServerFactory,
) -> None:
    server = start_server("--idle-timeout", "1s")
    with raw_connection(server) as sock:
        sock.sendall(b"POST /send HT")
        read_until_closed(sock, time.monotonic() + DEADLINE)
    still_serving(server)


def test_a_client_dribbling_its_headers_is_cut_off(start_server: ServerFactory) -> None:
    """Slowloris: a byte every 0.2 s keeps the connection busy but never completes a
    request; the idle timeout counts from the start of the request, not the last byte."""
    server = start_server("--idle-timeout", "1s")
    request = b"POST /send HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200
    deadline = time.monotonic() + DEADLINE
    with raw_connection(server) as sock:
        sock.settimeout(0.2)
        for byte in request:
            assert time.monotonic() < deadline, "the dribbling client was never cut off"
            try:
                sock.sendall(bytes([byte]))
                if sock.recv(65536) == b"":
                    break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
        else:
            pytest.fail("the server read a whole dribbled request line and headers")
    still_serving(server)


def test_a_body_that_stalls_gets_408_or_is_closed(start_server: ServerFactory) -> None:
    server = start_server("--body-timeout", "1s")
    head = (
        b"POST /send HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n"
    )
    with raw_connection(server) as sock:
        sock.sendall(head + b'{"id": 1, ')
        answer = read_status_or_close(sock, time.monotonic() + DEADLINE)
    assert answer is None or answer.startswith(b"HTTP/1.1 408"), answer
    still_serving(server)


def read_status_or_close(sock: socket.socket, deadline: float) -> bytes | None:
    """The server's status line, or None if it closed the connection without one."""
    received = b""
    while b"\r\n" not in received:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            pytest.fail(f"no answer and no close for a stalled body; got {received!r}")
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return received or None
        received += chunk
    return received.split(b"\r\n", 1)[0]
