"""The fast lane: publishes answered without aiohttp's per-request machinery.

A publish is most of what a broker serves, and aiohttp spent about half of its CPU on
things a publish does not need: a Request with its StreamReader, a task, the router,
two middlewares, a Response with its writer and signals. Measured with `make bench`'s
publish figure (2 processes, 64 connections): 131 µs of server CPU a message through
aiohttp, 68 µs through a first version of this lane.

So every connection starts here: an asyncio protocol that parses with llhttp
(httptools) and answers the seed protocol (POST /connect, /send, /disconnect: what an
MQ Go client says on its keep-alive connection) and the native publish (POST
/v1/topics/{topic}/messages) itself, through the same functions their aiohttp routes
call (`auth.key_holder`, `requests.parse_object`, `seed.*_answer`,
`messages.publish_answer`), so a request is checked and answered alike either way.

Anything else goes to aiohttp together with the connection: the first bytes the lane
does not answer, and all that follow, are handed to an aiohttp request handler as if it
had had the connection from the start. Every other route, and every defence the tests
pin down for odd requests, stays aiohttp's. Once aiohttp has answered and the
connection is between two requests, it comes back to the lane (http_errors.py,
`ProblemRequestHandler._back_to_lane`). The lane answers a chunk of bytes read only if
every request in it is complete and plain:
- a POST to one of those paths, with no query and nothing percent-encoded, HTTP/1.x;
- its whole body within the bytes read, its Content-Length within the route's limit;
- none of Transfer-Encoding, Content-Encoding, Expect, Origin (a browser's cross-site
  checks are the middleware's), or an upgrade;
- a request line and header lines well within --max-url-bytes and --max-header-bytes.
A request split over two reads (a slow client, a large batch) goes to aiohttp, which
waits for the rest under its own timeouts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import cast

import httptools
from aiohttp import web
from aiohttp.tcp_helpers import tcp_keepalive
from multidict import CIMultiDict

from mqpy.api.auth import bearer_token, key_holder, refusal
from mqpy.api.fields import check_topic_name
from mqpy.api.messages import Publishing, publish_answer
from mqpy.api.problems import Problem, problem_for
from mqpy.api.requests import parse_object
from mqpy.api.seed import connect_answer, disconnect_answer, send_answer
from mqpy.api.state import MAX_BATCH_BYTES, MAX_MESSAGE_BYTES
from mqpy.api.status import OBSERVER
from mqpy.model.errors import BrokerError

log = logging.getLogger("mqpy.api")

# The seed protocol's routes, each with and without its trailing slash: an MQ Go
# client connects, sends and disconnects on one keep-alive connection. All three take
# (app, principal, headers, body) so that the lane calls them alike; only /send reads
# a header (Idempotency-Key).
_SEED_ANSWERS = {
    path + ending: answer
    for path, answer in (
        (b"/send", send_answer),
        (b"/connect", connect_answer),
        (b"/disconnect", disconnect_answer),
    )
    for ending in (b"", b"/")
}
_TOPICS = b"/v1/topics/"
_MESSAGES = (b"/messages", b"/messages/")
# Headers whose presence sends a request to aiohttp, which handles what they ask for.
_HANDED_OVER_HEADERS = frozenset(
    {b"transfer-encoding", b"content-encoding", b"expect", b"origin", b"upgrade"}
)
# Headers a request may carry once: each twice sends it to aiohttp.
_SINGLETONS = frozenset(
    {b"host", b"content-length", b"content-type", b"authorization", b"idempotency-key"}
)
_MAX_HEADERS = 64
# Answers waiting to be read by a client that pipelines without reading: past this the
# lane stops reading from it until it catches up.
_MAX_WAITING_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class LaneLimits:
    """What the lane must leave to aiohttp, and how long an idle connection stays."""

    idle_timeout: float
    max_url_bytes: int
    max_header_bytes: int


class FastLanes:
    """The fast-lane connections of one server: makes them, and closes them at
    shutdown as aiohttp closes its own (idle ones at once, busy ones once answered)."""

    def __init__(
        self,
        app: web.Application,
        limits: LaneLimits,
        aiohttp_handler: Callable[[], asyncio.Protocol],
    ) -> None:
        self.app = app
        self.observer = app[OBSERVER]
        self.limits = limits
        self.aiohttp_handler = aiohttp_handler  # a new aiohttp protocol, for a hand-over
        self._open: set[FastLane] = set()
        self._closing = False

    def connection(self) -> FastLane:
        return FastLane(self)

    def opened(self, lane: FastLane) -> None:
        if self._closing:
            lane.close_when_idle()
        self._open.add(lane)

    def left(self, lane: FastLane) -> None:
        self._open.discard(lane)

    def close_idle(self) -> None:
        """Stop taking requests: idle connections close now, busy ones once answered."""
        self._closing = True
        for lane in list(self._open):
            lane.close_when_idle()

    async def shutdown(self, timeout: float) -> None:
        """Wait up to `timeout` for the answers under way, then drop what is left."""
        busy = [lane.answering for lane in self._open if lane.answering is not None]
        if busy:
            await asyncio.wait(busy, timeout=timeout)
        for lane in list(self._open):
            lane.abort()


@dataclass(slots=True)
class _Request:
    """One request as parsed, before the lane decides whether it answers it."""

    url: bytes = b""
    headers: list[tuple[bytes, bytes]] | None = None
    body: bytes = b""
    method: bytes = b""
    version: str = "1.1"
    keep_alive: bool = True
    topic: str | None = None  # of a native publish, read from the path once


class FastLane(asyncio.Protocol):
    """One connection, answered here until it asks for something only aiohttp serves."""

    def __init__(self, lanes: FastLanes) -> None:
        self._lanes = lanes
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._parsed: list[_Request] = []
        self._reading: _Request | None = None  # begun in the bytes fed, not complete
        # While requests are being answered; bytes that come meanwhile wait.
        self.answering: asyncio.Task[None] | None = None
        self._waiting: list[bytes] = []
        self._waiting_bytes = 0
        self._reading_paused = False
        self._writable: asyncio.Future[None] | None = None  # while the client lags
        self._close_when_idle = False
        self._handed_over = False
        self._idle_since = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports quack like asyncio.Transport without inheriting from it.
        self._transport = cast(asyncio.Transport, transport)
        tcp_keepalive(self._transport)  # as aiohttp's own connections
        self._lanes.opened(self)
        self._idle_since = asyncio.get_running_loop().time()
        self._arm_idle_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._lanes.left(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.answering is not None:
            self._wait_with(data)
            return
        self._take(data)

    # Closing

    def close_when_idle(self) -> None:
        self._close_when_idle = True
        if self.answering is None and self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _arm_idle_timer(self) -> None:
        loop = asyncio.get_running_loop()
        self._idle_timer = loop.call_at(
            self._idle_since + self._lanes.limits.idle_timeout, self._idle_check
        )

    def _idle_check(self) -> None:
        """Close a keep-alive connection left idle for --idle-timeout, as aiohttp does."""
        self._idle_timer = None
        if self._transport is None or self._handed_over:
            return
        now = asyncio.get_running_loop().time()
        if self.answering is None and now - self._idle_since >= self._lanes.limits.idle_timeout:
            self._transport.close()
            return
        if self.answering is not None:
            self._idle_since = now  # checked again a whole timeout after this
        self._arm_idle_timer()

    # Taking requests

    def _wait_with(self, data: bytes) -> None:
        """Keep bytes that came while answering, for after; stop reading past a limit."""
        self._waiting.append(data)
        self._waiting_bytes += len(data)
        if self._waiting_bytes > _MAX_WAITING_BYTES and self._transport is not None:
            self._transport.pause_reading()
            self._reading_paused = True

    def _take(self, data: bytes) -> None:
        """Answer every request in `data` here, or hand `data` and the connection to
        aiohttp if any of them is not the lane's (see the module's docstring)."""
        self._parsed = []
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):  # aiohttp answers
            self._hand_over(data)
            return
        if self._reading is not None or not all(self._is_plain(r) for r in self._parsed):
            self._hand_over(data)
            return
        requests, self._parsed = self._parsed, []
        if not requests:
            return
        # Held here (the loop keeps only a weak reference to a task), and by shutdown.
        self.answering = asyncio.get_running_loop().create_task(self._answer_all(requests))

    def _is_plain(self, request: _Request) -> bool:
        limits = self._lanes.limits
        if request.method != b"POST" or request.version not in ("1.0", "1.1"):
            return False
        if len(request.url) > limits.max_url_bytes // 2:
            return False
        app = self._lanes.app
        if request.url in _SEED_ANSWERS:
            limit = app[MAX_MESSAGE_BYTES]
        else:
            topic = _topic_in(request.url)
            if topic is None:
                return False
            request.topic = topic.decode()
            limit = app[MAX_BATCH_BYTES]
        if len(request.body) > limit:
            return False
        headers = request.headers or []
        if len(headers) > _MAX_HEADERS:
            return False
        singletons: set[bytes] = set()
        for name, value in headers:
            if len(name) + len(value) > limits.max_header_bytes // 2:
                return False
            lowered = name.lower()
            if lowered in _HANDED_OVER_HEADERS:
                return False
            if lowered in _SINGLETONS:
                if lowered in singletons:
                    return False  # aiohttp refuses some twice over, and says why
                singletons.add(lowered)
        # HTTP/1.1 requires Host (aiohttp answers 400 without it); a body, its length.
        return b"content-length" in singletons and (
            b"host" in singletons or request.version == "1.0"
        )

    def _hand_over(self, data: bytes) -> None:
        """From here on aiohttp serves the connection, starting with `data`."""
        transport = self._transport
        if transport is None:
            return
        self._handed_over = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._lanes.left(self)
        handler = self._lanes.aiohttp_handler()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._reading_paused:
            transport.resume_reading()
        handler.data_received(data)

    async def _answer_all(self, requests: list[_Request]) -> None:
        try:
            for request in requests:
                response = await _answer(self._lanes.app, request)
                transport = self._transport
                if transport is None:
                    return  # the client went away; what it asked for was done
                keep = (
                    request.keep_alive
                    and response.keep_alive is not False
                    and not self._close_when_idle
                )
                transport.write(_encoded(response, request, keep))
                self._lanes.observer.request_served("fast_lane")
                if not keep:
                    transport.close()
                    return
                if self._writable is not None:
                    await self._writable  # the client reads its answers slowly
        finally:
            self.answering = None
            self._idle_since = asyncio.get_running_loop().time()
        self._after_answering()

    def _after_answering(self) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        if self._close_when_idle:
            self._transport.close()
            return
        if self._reading_paused:
            self._transport.resume_reading()
            self._reading_paused = False
        if self._waiting:
            data = b"".join(self._waiting)
            self._waiting, self._waiting_bytes = [], 0
            self._take(data)

    # llhttp's callbacks, through httptools

    def on_message_begin(self) -> None:
        self._reading = _Request(headers=[])

    def on_url(self, url: bytes) -> None:
        assert self._reading is not None
        self._reading.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._reading is not None and self._reading.headers is not None
        self._reading.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        assert self._reading is not None
        self._reading.body += body

    def on_message_complete(self) -> None:
        request = self._reading
        assert request is not None
        request.method = self._parser.get_method()
        request.version = self._parser.get_http_version()
        request.keep_alive = self._parser.should_keep_alive()
        self._parsed.append(request)
        self._reading = None


def _topic_in(url: bytes) -> bytes | None:
    """The topic of /v1/topics/{topic}/messages, as its route matches it, or None."""
    if not url.startswith(_TOPICS) or b"%" in url or b"?" in url:
        return None
    for ending in _MESSAGES:
        if url.endswith(ending):
            topic = url[len(_TOPICS) : -len(ending)]
            if topic and b"/" not in topic and topic.isascii():
                return topic
    return None


async def _answer(app: web.Application, request: _Request) -> web.Response:
    """What the aiohttp route with its middlewares would answer (see app.py)."""
    path = request.url.decode("ascii", "replace")
    headers = CIMultiDict(
        (name.decode("latin-1"), value.decode("utf-8", "surrogateescape"))
        for name, value in request.headers or []
    )
    try:
        token = bearer_token(headers)
        principal = await key_holder(app, token)
        if principal is None:
            raise refusal(headers, token)
        seed = _SEED_ANSWERS.get(request.url)
        if seed is not None:
            return await seed(app, principal, headers, parse_object(request.body))
        topic = check_topic_name(request.topic or "")
        data = parse_object(request.body, fold_case=False)
        return await publish_answer(Publishing(app, principal, headers, path), topic, data)
    except Problem as problem:
        return problem.to_response(path)
    except BrokerError as error:
        return problem_for(error).to_response(path)
    except Exception:
        log.exception("unexpected error answering POST %s", path)
        return Problem(500, "http-error", "Internal Server Error", close=True).to_response(path)


def _encoded(response: web.Response, request: _Request, keep_alive: bool) -> bytes:
    """`response` as aiohttp would write it, with the headers every answer carries."""
    body = response.body
    assert isinstance(body, bytes), "the publish routes answer with bytes"
    status = response.status
    lines = [f"HTTP/{request.version} {status} {response.reason}\r\n".encode()]
    lines.extend(f"{name}: {value}\r\n".encode() for name, value in response.headers.items())
    lines.append(b"Content-Length: %d\r\nDate: %s\r\nServer: mq-py\r\n" % (len(body), _date()))
    if not keep_alive:
        lines.append(b"Connection: close\r\n")
    elif request.version == "1.0":
        lines.append(b"Connection: keep-alive\r\n")
    lines.append(b"\r\n")
    lines.append(body)
    return b"".join(lines)


class _DateHeader:
    """The Date header's value, made at most once a second."""

    def __init__(self) -> None:
        self._second = 0
        self._value = b""

    def __call__(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True).encode()
        return self._value


_date = _DateHeader()
