"""aiohttp's side of serving a connection: the errors it answers itself, before any
handler or middleware runs, made into problem+json like every other error (malformed
HTTP: a bad request line, a missing Host, an oversized header, an unknown
Content-Encoding; unsupported `Expect` headers), and the connections it takes from the
fast lane (fast_lane.py) and gives back once they are between two requests."""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from typing import Any

import httptools
from aiohttp import web
from aiohttp.web_protocol import RequestHandler, _ErrInfo
from aiohttp.web_request import BaseRequest
from aiohttp.web_urldispatcher import _default_expect_handler

from mqpy.api.fast_lane import FastLanes, LaneLimits
from mqpy.api.problems import Problem

log = logging.getLogger("mqpy.api")

# How many turns of the event loop an answered connection may take to be waiting for
# its next request before it stays with aiohttp.
_TRIES_BACK_TO_LANE = 5


class ProblemRequestHandler(RequestHandler):
    """aiohttp's per-connection protocol, answering parse errors as problem+json, and
    giving the connection back to the fast lane once it is between two requests."""

    def __init__(self, manager: web.Server, *, lanes: FastLanes, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._lanes = lanes
        self._boundary = _Boundary()

    def data_received(self, data: bytes) -> None:
        queued = len(self._messages)
        self._boundary.feed(data)
        super().data_received(data)
        # aiohttp queues a parse error met in the middle of a request's body (a broken
        # chunked encoding) as the next message, while the handler reading that body
        # waits for bytes that will never come: until --body-timeout, then a lingering
        # close, 40 s in all. Tell the body at once, so the handler answers 400 now.
        request = self._current_request
        if request is None or len(self._messages) <= queued:
            return
        error, _ = self._messages[-1]
        if isinstance(error, _ErrInfo) and not request.content.is_eof():
            reason = (str(error.message).strip().splitlines() or ["broken framing"])[0]
            request.content.set_exception(web.RequestPayloadError(reason.rstrip(":")))
            # At its end too: aiohttp would otherwise linger, reading the rest of it.
            request.content.feed_eof()

    async def finish_response(
        self, request: BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        answered = await super().finish_response(request, resp, start_time)
        self._loop.call_soon(self._back_to_lane, _TRIES_BACK_TO_LANE)
        return answered

    def _back_to_lane(self, tries: int) -> None:
        """Give the connection back to the fast lane if it is between two requests,
        every byte aiohttp read belonging to a request it answered: a client that
        made a subscription, or looked at the dashboard, publishes fast again on the
        same connection. aiohttp's loop comes round to waiting for the next request a
        few turns of the event loop after an answer: until then, look again."""
        lanes, transport = self._lanes, self.transport
        if transport is None or transport.is_closing():
            return
        if self._waiter is None or self._waiter.done():
            if tries > 0:
                self._loop.call_soon(self._back_to_lane, tries - 1)
            return
        if (
            self._messages
            or self._force_close
            or self._close
            or self._upgraded
            or self._payload_parser is not None
            or self._buffer_paused
            or self._message_tail
            or not self._boundary.between(self._request_count)
        ):
            return
        # aiohttp lets go: its loop ends (the waiter is cancelled) without closing the
        # connection, which it no longer holds, and its server forgets it.
        self.transport = None
        if self._keepalive_handle is not None:
            self._keepalive_handle.cancel()
            self._keepalive_handle = None
        manager = self._manager
        self.force_close()
        if manager is not None:
            manager.connection_lost(self, None)
        self._manager = None
        lane = lanes.connection()
        transport.set_protocol(lane)
        lane.connection_made(transport)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500 and _unknown_expectation(request):
            # A request with any other `Expect` than 100-continue never reaches a
            # handler: for a path or method no route has, aiohttp's own expect
            # handler refuses it, echoing the header into its text, which fails (500)
            # on a value that is not UTF-8. Refuse it as a route's own handler does.
            return expectation_failed(request)
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        # A malformed request is the client's mistake: worth a debug line, not an
        # ERROR with a traceback that anyone could flood the log with.
        log.debug("malformed request from %s: %s", request.remote, message or exc)
        if request.writer.output_size > 0:
            raise ConnectionError("a response was already sent; cannot send the error")
        reason = message or (str(exc) if exc else HTTPStatus(status).phrase)
        response = Problem(
            status,
            "malformed-request",
            f"the request is not HTTP this server can read: {reason}",
        ).to_response()
        response.headers["Server"] = "mq-py"
        response.force_close()
        return response


class _Boundary:
    """Whether the bytes aiohttp was given end between two requests: read by a parser
    of our own beside aiohttp's, which tells no more than the requests it queued."""

    __slots__ = ("_open", "_parser", "broken", "completed")

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._open = False
        self.broken = False  # malformed or upgraded: it stays aiohttp's
        self.completed = 0

    def feed(self, data: bytes) -> None:
        if self.broken:
            return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self.broken = True

    def between(self, queued: int) -> bool:
        """Between two requests, aiohttp having queued (`queued`) every one read."""
        return not self.broken and not self._open and self.completed == queued

    # httptools' callbacks

    def on_message_begin(self) -> None:
        self._open = True

    def on_message_complete(self) -> None:
        self._open = False
        self.completed += 1


class ProblemServer(web.Server):
    """Starts every connection in the fast lane (fast_lane.py), which hands it to a
    `ProblemRequestHandler` for anything but a plain publish."""

    lanes: FastLanes  # set by ProblemAppRunner, which makes the server

    # The loop takes any protocol factory; aiohttp's type says its own protocol only.
    def __call__(self) -> asyncio.Protocol:  # type: ignore[override]
        return self.lanes.connection()

    def connection_handler(self) -> RequestHandler:
        """aiohttp's own protocol for a connection (from its start, or handed over)."""
        return ProblemRequestHandler(self, lanes=self.lanes, loop=self._loop, **self._kwargs)

    def pre_shutdown(self) -> None:
        super().pre_shutdown()
        self.lanes.close_idle()

    async def shutdown(self, timeout: float | None = None) -> None:
        await asyncio.gather(
            super().shutdown(timeout), self.lanes.shutdown(15.0 if timeout is None else timeout)
        )


class ProblemAppRunner(web.AppRunner):
    """An AppRunner whose connections answer malformed HTTP with problem+json, and
    leave request bodies as sent: `encodings.py` decompresses them, not aiohttp."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        """Connections start in the fast lane (fast_lane.py), which leaves to aiohttp
        what comes near the limits given here (`max_line_size`, `max_field_size`) and
        closes idle ones after `keepalive_timeout`, as aiohttp does."""
        kwargs.setdefault("auto_decompress", False)
        super().__init__(app, **kwargs)
        self._lane_limits = LaneLimits(
            idle_timeout=kwargs.get("keepalive_timeout", 75.0),
            max_url_bytes=kwargs.get("max_line_size", 8190),
            max_header_bytes=kwargs.get("max_field_size", 8190),
        )

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp offers no hook for the per-connection handler class; the server it
        # builds is otherwise exactly what we want, so only its class changes.
        server.__class__ = ProblemServer
        assert isinstance(server, ProblemServer)
        server.lanes = FastLanes(self.app, self._lane_limits, server.connection_handler)
        return server


async def expect_handler(request: web.Request) -> web.StreamResponse | None:
    """`Expect: 100-continue` as aiohttp does; any other expectation is a 417 problem.

    This runs outside the middleware, so it answers rather than raises."""
    if not _unknown_expectation(request):
        await _default_expect_handler(request)
        return None
    return expectation_failed(request)


def expectation_failed(request: BaseRequest) -> web.StreamResponse:
    """417 for an `Expect` header other than 100-continue."""
    expectation = request.headers.get("Expect", "")
    # A header that is not UTF-8 (read with surrogate escapes) is shown as the bytes
    # it was (\xed), instead of failing to encode.
    shown = expectation.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    response = Problem(
        417,
        "expectation-failed",
        f"this server only understands 'Expect: 100-continue', not '{shown}'",
    ).to_response(request.path)
    response.force_close()  # the body that was not expected may still be on its way
    return response


def _unknown_expectation(request: BaseRequest) -> bool:
    expectation = request.headers.get("Expect")
    return expectation is not None and expectation.lower() != "100-continue"
