"""HTTP/1.1 connections to receivers: the wire under the delivery client.

aiohttp's client spent 67 to 86 µs of CPU per POST on the development machine, this
one 21 to 25 µs (16 at a time, 20,000 POSTs to a receiver answering 204 at once, both
on uvloop). Most of aiohttp's went to what a delivery never uses: cookie jars, tracing
signals, redirects, decompression, stream readers, a response object per answer. A
delivery is one POST whose answer matters only by its status and `Retry-After`, so
this module does just that. llhttp parses the answers (through httptools, the parser
under uvicorn); the rest is here:

- Connections are kept alive per origin and reused newest first, so a quiet period lets
  the older ones expire. An idle connection is closed after `KEEP_ALIVE_SECONDS`, or as
  soon as its receiver closes it.
- Every address is judged by the `AddressPolicy` right before its socket connects, and a
  name is refused whole when any address in its DNS answer is refused (`guard.py`).
- An answer's head may take at most `MAX_HEAD_BYTES`; its body is read and dropped, and
  past `MAX_BODY_BYTES` the connection is closed rather than read further.
- A request sent on a kept-alive connection that the receiver closed in the meantime,
  before a byte of answer came back, is sent once more on a new connection. This is
  what browsers and Go's client do for a connection that went stale while idle;
  `webhook-id` lets a receiver recognise the rare duplicate it can cause.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import cast

import httptools
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from mqpy.delivery.guard import (
    DNS_CACHE_SECONDS,
    AddressPolicy,
    AddressRefused,
    GuardedResolver,
    address_refusal,
    parse_ip,
)

# An idle connection is closed after this long: receivers commonly close theirs after
# 5 to 75 s (nginx 75 s, Node 5 s, Go no limit), and a reused one saves a handshake.
KEEP_ALIVE_SECONDS = 15.0
# Idle connections kept per origin; the dispatcher's bounds keep far fewer in use.
MAX_IDLE_PER_ORIGIN = 512
# An answer's status line and headers; aiohttp's and nginx's limits are of this order.
MAX_HEAD_BYTES = 64 * 1024
# An answer's body is read so the connection can be reused, but not kept; past this,
# the connection is dropped instead.
MAX_BODY_BYTES = 1 << 20

Origin = tuple[str, str, int]  # scheme, host, port


class DeliveryFailed(Exception):
    """A request that got no answer, with the reason as a sentence for `last_error`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Dropped(DeliveryFailed):
    """The receiver closed the connection before its answer was complete."""

    def __init__(self, answered_at_all: bool) -> None:
        super().__init__(
            "the receiver closed the connection in the middle of its answer"
            if answered_at_all
            else "the receiver closed the connection without answering"
        )
        self.answered_at_all = answered_at_all


@dataclass(frozen=True, slots=True)
class Answer:
    """What a receiver answered: its status, `Retry-After` if any, and the first bytes
    of its body when they were asked for."""

    status: int
    retry_after: str | None
    body: bytes


@dataclass(frozen=True, slots=True)
class _Target:
    origin: Origin
    head: bytes  # the request line and the headers every request to this URL carries


class ReceiverConnections:
    """POSTs to receivers over kept-alive HTTP/1.1 connections, guarded by `policy`.

    `resolver` is the upstream DNS resolver to guard (default: aiohttp's threaded one,
    which calls getaddrinfo in a worker thread). Create and use it in one event loop.
    """

    def __init__(
        self,
        policy: AddressPolicy,
        *,
        ssl_context: ssl.SSLContext | None = None,
        resolver: AbstractResolver | None = None,
        user_agent: str = "mq-py",
    ) -> None:
        self._policy = policy
        self._resolver = GuardedResolver(policy, resolver)
        # The default context is made at the first https receiver: loading the system's
        # CA certificates takes about 20 ms of CPU, a third of a start.
        self._ssl = ssl_context
        self._common = (
            f"User-Agent: {user_agent}\r\n"
            # Answers are drained, never decoded, so ask for them uncompressed.
            "Accept-Encoding: identity\r\n"
        ).encode()
        self._idle: dict[Origin, list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._lookups: dict[tuple[str, int], tuple[float, list[ResolveResult]]] = {}
        self._pending: dict[tuple[str, int], asyncio.Task[list[ResolveResult]]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    async def post(
        self,
        url: str,
        body: bytes,
        headers: Iterable[tuple[str, str]],
        *,
        timeout: float,
        keep_body: int = 0,
    ) -> Answer:
        """POST `body` to `url` and wait for the whole answer; raise `DeliveryFailed`
        when there is none, and TimeoutError when it takes longer than `timeout` seconds
        from here (looking the name up and connecting included)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        target = _target(url)
        lines = [target.head, self._common]
        for name, value in headers:
            if "\r" in value or "\n" in value:
                raise ValueError(f"header {name} may not contain a line break")
            lines.append(f"{name}: {value}\r\n".encode())
        lines.append(b"Content-Length: %d\r\n\r\n" % len(body))
        lines.append(body)
        request = b"".join(lines)

        connection = self._take_idle(target.origin)
        if connection is not None:
            try:
                return await self._exchange(connection, request, keep_body, deadline)
            except _Dropped as dropped:
                if dropped.answered_at_all:
                    raise
                # It went stale while idle: the receiver closed it as we sent.
        async with asyncio.timeout_at(deadline):
            connection = await self._connect(target.origin)
        return await self._exchange(connection, request, keep_body, deadline)

    async def close(self) -> None:
        """Close every connection, idle or in use."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for connection in list(self._open):
            connection.close()
        self._idle.clear()
        await self._resolver.close()

    async def _exchange(
        self, connection: _Connection, request: bytes, keep: int, deadline: float
    ) -> Answer:
        try:
            answer = await connection.exchange(request, keep, deadline)
        except BaseException:
            connection.close()
            raise
        self._give_back(connection)
        return answer

    def _take_idle(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        now = asyncio.get_running_loop().time()
        while idle:
            connection = idle.pop()
            if connection.usable and now - connection.idle_since < KEEP_ALIVE_SECONDS:
                return connection
            connection.close()
        return None

    def _give_back(self, connection: _Connection) -> None:
        idle = self._idle.setdefault(connection.origin, [])
        if self._closed or not connection.usable or len(idle) >= MAX_IDLE_PER_ORIGIN:
            connection.close()
            return
        loop = asyncio.get_running_loop()
        connection.idle_since = loop.time()
        idle.append(connection)
        if self._sweeper is None:
            self._sweeper = loop.call_later(KEEP_ALIVE_SECONDS, self._sweep)

    def _sweep(self) -> None:
        """Close the connections idle for too long; come back while any are left."""
        self._sweeper = None
        now = asyncio.get_running_loop().time()
        for origin, idle in list(self._idle.items()):
            keep = [c for c in idle if c.usable and now - c.idle_since < KEEP_ALIVE_SECONDS]
            for connection in idle:
                if connection not in keep:
                    connection.close()
            if keep:
                self._idle[origin] = keep
            else:
                del self._idle[origin]
        if self._idle and not self._closed:
            self._sweeper = asyncio.get_running_loop().call_later(
                KEEP_ALIVE_SECONDS / 2, self._sweep
            )

    async def _connect(self, origin: Origin) -> _Connection:
        scheme, host, port = origin
        where = f"{host}:{port}"
        try:
            answers = await self._addresses(host, port)
        except OSError as exc:  # AddressRefused, or the name does not resolve
            raise DeliveryFailed(f"cannot connect to {where}: {_oserror_words(exc)}") from None
        loop = asyncio.get_running_loop()
        failure: BaseException | None = None
        for answer in answers:
            address = answer["host"]
            # Judged again right before the socket exists: IP literals never pass
            # through the resolver, and this holds whatever the cache says.
            reason = address_refusal(self._policy, address)
            if reason is not None:
                failure = AddressRefused(reason)
                break
            sock = socket.socket(answer["family"], socket.SOCK_STREAM)
            try:
                sock.setblocking(False)
                await loop.sock_connect(sock, (address, port))
                _, connection = await loop.create_connection(
                    lambda: _Connection(origin, self._open),
                    sock=sock,
                    ssl=self._tls() if scheme == "https" else None,
                    server_hostname=host if scheme == "https" else None,
                )
            except OSError as exc:  # refused, unreachable, or TLS (ssl.SSLError)
                sock.close()
                failure = exc
                continue
            except BaseException:
                sock.close()
                raise
            return connection
        words = _oserror_words(failure) if failure is not None else "no address to connect to"
        raise DeliveryFailed(f"cannot connect to {where}: {words}")

    async def _addresses(self, host: str, port: int) -> list[ResolveResult]:
        literal = parse_ip(host)
        if literal is not None:
            family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
            return [_literal(host, port, family)]
        loop = asyncio.get_running_loop()
        key = (host, port)
        cached = self._lookups.get(key)
        if cached is not None and cached[0] > loop.time():
            return cached[1]
        # Deliveries that start together to a new name share one lookup; shielded, so
        # one of them timing out does not cancel it for the rest.
        lookup = self._pending.get(key)
        if lookup is None:
            lookup = loop.create_task(self._resolver.resolve(host, port, socket.AF_UNSPEC))
            self._pending[key] = lookup
            lookup.add_done_callback(lambda _: self._pending.pop(key, None))
        answers = await asyncio.shield(lookup)
        # Only answers that passed the policy get here; every connection judges its
        # address again anyway, so the cache can only delay noticing a move.
        if len(self._lookups) > 4096:
            self._lookups.clear()
        self._lookups[key] = (loop.time() + DNS_CACHE_SECONDS, answers)
        return answers


def _literal(host: str, port: int, family: int) -> ResolveResult:
    return {
        "hostname": host,
        "host": host,
        "port": port,
        "family": family,
        "proto": 0,
        "flags": 0,
    }


@lru_cache(maxsize=4096)
def _target(url: str) -> _Target:
    """The origin to connect to and the fixed part of every request to `url`."""
    parsed = URL(url)
    scheme = parsed.scheme
    host = parsed.raw_host
    if scheme not in ("http", "https") or not host:
        raise DeliveryFailed(f"{url!r} is not an http or https URL with a host")
    port = parsed.port or (443 if scheme == "https" else 80)
    named = f"[{host}]" if ":" in host else host
    if not parsed.is_default_port():
        named = f"{named}:{port}"
    head = f"POST {parsed.raw_path_qs or '/'} HTTP/1.1\r\nHost: {named}\r\n"
    if parsed.user is not None:
        # Credentials in the URL (https://user:secret@host/hook) go as Basic auth, as
        # HTTP clients send them; they never go on the request line.
        pair = f"{parsed.user}:{parsed.password or ''}"
        try:
            token = base64.b64encode(pair.encode("latin-1"))
        except UnicodeEncodeError:
            token = base64.b64encode(pair.encode())
        head += f"Authorization: Basic {token.decode()}\r\n"
    return _Target((scheme, host, port), head.encode())


def _expire(answer: asyncio.Future[Answer]) -> None:
    """The deadline of a request passed with no answer."""
    if not answer.done():
        answer.set_exception(TimeoutError())


def _oserror_words(exc: BaseException) -> str:
    """An OS or TLS error as the words `last_error` shows after "cannot connect to"."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, AddressRefused):
        return str(exc)
    if isinstance(exc, socket.gaierror) and exc.strerror:
        return exc.strerror  # "Name or service not known", ...
    if isinstance(exc, OSError) and exc.errno:
        # asyncio's own words ("Connect call failed ('10.0.0.7', 80)") vary by loop.
        return os.strerror(exc.errno)  # "Connection refused", ...
    return str(exc)


class _Connection(asyncio.Protocol):
    """One connection to a receiver: one request at a time, answers parsed by llhttp.

    The parser's callbacks (`on_header`, ...) record what matters of the answer; the
    request's future is settled once the answer is complete, or the connection ends.
    """

    def __init__(self, origin: Origin, registry: set[_Connection]) -> None:
        self.origin = origin
        self.idle_since = 0.0
        self._registry = registry
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._answer: asyncio.Future[Answer] | None = None
        self._keep_alive = True
        self._closed = False
        self._reset(0)

    @property
    def usable(self) -> bool:
        """Free, open, and its last answer allowed another request."""
        return not self._closed and self._keep_alive and self._answer is None

    def _reset(self, keep: int) -> None:
        self._keep = keep
        self._status = 0
        self._retry_after: bytes | None = None
        self._received = 0
        self._head_size = 0
        self._head_done = False
        self._body = bytearray()
        self._body_read = 0
        self._complete = False

    async def exchange(self, request: bytes, keep: int, deadline: float) -> Answer:
        """Send `request` and wait for its answer until `deadline` (the loop's clock),
        then raise TimeoutError. The deadline is one timer on the loop, not an
        `asyncio.timeout` around the await: that cost about 5 µs of a delivery's CPU."""
        assert self._transport is not None and self._answer is None
        if self._closed:
            raise _Dropped(answered_at_all=False)
        self._reset(keep)
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Answer] = loop.create_future()
        self._answer = answer
        timer = loop.call_at(deadline, _expire, answer)
        self._transport.write(request)
        try:
            return await answer
        finally:
            timer.cancel()
            self._answer = None

    def close(self) -> None:
        self._keep_alive = False
        if self._transport is not None and not self._closed:
            self._transport.abort()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports quack like asyncio.Transport without inheriting from it.
        self._transport = cast(asyncio.Transport, transport)
        self._registry.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._registry.discard(self)
        if self._answer is None or self._answer.done():
            return
        if self._head_done:
            # The status is in; an answer whose body runs to the end of the
            # connection ends here, and any other was cut short while being drained.
            self._settle()
        else:
            self._answer.set_exception(_Dropped(answered_at_all=self._received > 0))

    def data_received(self, data: bytes) -> None:
        answer = self._answer
        if answer is None or answer.done():
            # Nothing was asked: whatever follows on this connection cannot be trusted.
            self.close()
            return
        self._received += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail("the receiver switched protocols instead of answering")
            return
        except httptools.HttpParserError as exc:
            self._fail(f"the receiver's answer is not valid HTTP: {exc}")
            return
        if self._head_size > MAX_HEAD_BYTES or (
            not self._head_done and self._received > MAX_HEAD_BYTES
        ):
            self._fail(f"the receiver's answer headers exceed {MAX_HEAD_BYTES // 1024} KiB")
        elif self._complete:
            self._settle()
        elif self._body_read > MAX_BODY_BYTES:
            self._keep_alive = False
            self._settle()
            self.close()

    # llhttp's callbacks, through httptools

    def on_header(self, name: bytes, value: bytes) -> None:
        # Counted here as well as by bytes received: a whole head can come in one read.
        self._head_size += len(name) + len(value) + 4
        if name.lower() == b"retry-after":
            self._retry_after = value

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._head_done = self._status >= 200

    def on_body(self, body: bytes) -> None:
        self._body_read += len(body)
        room = self._keep - len(self._body)
        if room > 0:
            self._body += body[:room]

    def on_message_complete(self) -> None:
        if self._status < 200:
            # An interim answer (100 Continue, 103 Early Hints): the real one follows.
            self._retry_after = None
            return
        self._keep_alive = self._parser.should_keep_alive()
        self._complete = True

    def _settle(self) -> None:
        assert self._answer is not None
        if not self._complete:
            self._keep_alive = False
        retry_after = self._retry_after.decode("latin-1") if self._retry_after else None
        self._answer.set_result(Answer(self._status, retry_after, bytes(self._body)))

    def _fail(self, reason: str) -> None:
        assert self._answer is not None
        self._answer.set_exception(DeliveryFailed(reason))
        self.close()
