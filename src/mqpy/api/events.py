"""GET /v1/subscriptions/{id}/events: a pull subscription's messages as Server-Sent
Events, for consumers that keep one connection open (browsers, `curl -N`).

Each message is an event: `id:` its ack id, `event: message`, `data:` the message as
JSON (what a pull answers). A comment line every HEARTBEAT_SECONDS keeps proxies from
closing an idle stream. With `?ack=auto` each message is acked once written to the
stream (at most once: one written as the connection dropped is lost); otherwise the
client acks through POST .../ack, and whatever it leaves unacked, on a stream that
dropped too, comes again after the ack deadline. What was pulled for a stream but not
yet written when it dropped is due again at once.
"""

from __future__ import annotations

import time

import msgspec
from aiohttp import web

from mqpy.api.bodies import EventsTokenBody
from mqpy.api.problems import invalid_field
from mqpy.api.pull import client_gone
from mqpy.api.requests import convert, read_object
from mqpy.api.responses import json_response
from mqpy.api.state import ACCESS, PULLS, broker_of, principal_of
from mqpy.api.subscriptions import subscription_id
from mqpy.api.views import EventsTokenView, pulled_message_view
from mqpy.model.errors import NotPullable, StoreUnavailable, UnknownSubscription
from mqpy.model.rfc3339 import rfc3339
from mqpy.pull import AckId, Pulled

HEARTBEAT_SECONDS = 15.0
# Messages taken per pull while the stream keeps up; each waits its turn on the wire
# within its ack deadline.
STREAM_BATCH = 100
_ACK_MODES = ("auto", "client")
_encode = msgspec.json.Encoder().encode


async def events(request: web.Request) -> web.StreamResponse:
    target = subscription_id(request)
    principal = principal_of(request)
    auto_ack = _ack_mode(request) == "auto"
    # Checked before the 200: an unknown or push subscription answers problem+json.
    await broker_of(request).pullable(target, principal)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # nginx: pass each event on at once
        }
    )
    await response.prepare(request)
    if request.method == "HEAD":
        return response
    pulls = request.app[PULLS]
    try:
        await response.write(b": connected\n\n")
        while not pulls.stopping and not client_gone(request):
            try:
                pulled = await pulls.pull(
                    target, principal, max_messages=STREAM_BATCH, wait_seconds=HEARTBEAT_SECONDS
                )
            except (UnknownSubscription, NotPullable, StoreUnavailable):
                break  # deleted meanwhile, or the store is down: the stream ends
            if not pulled:
                await response.write(b": heartbeat\n\n")
                continue
            written: list[AckId] = []
            try:
                for message in pulled:
                    await response.write(_event(message))
                    written.append(message.ack_id)
            finally:
                # What the stream could not take is due again at once; what it took
                # waits for its ack (or, with ack=auto, is acked now).
                await pulls.give_back(pulled[len(written) :])
                if auto_ack and written:
                    await pulls.ack(target, principal, written)
    except ConnectionResetError:
        pass  # the client went away; its unacked messages come again after the deadline
    return response


def _ack_mode(request: web.Request) -> str:
    mode = request.query.get("ack", "client")
    if mode not in _ACK_MODES:
        raise invalid_field(
            "ack",
            f"ack={mode[:40]!r} is not a mode; use ack=auto to have each message acked once "
            "written, or leave it out and ack through POST .../ack",
        )
    return mode


def _event(message: Pulled) -> bytes:
    data = _encode(pulled_message_view(message))
    return b"id: %s\nevent: message\ndata: %s\n\n" % (str(message.ack_id).encode(), data)


async def events_token(request: web.Request) -> web.Response:
    """A short-lived token that opens this pull subscription's stream as `?token=`,
    for a browser's EventSource, which cannot send Authorization (stream_tokens.py)."""
    target = subscription_id(request)
    principal = principal_of(request)
    body = convert(await read_object(request, allow_empty=True), EventsTokenBody)
    await broker_of(request).pullable(target, principal)
    expires_at = int(time.time()) + body.ttl_seconds
    token = request.app[ACCESS].stream_token(principal, target, expires_at)
    return json_response(
        EventsTokenView(
            token=token,
            expires_at=rfc3339(expires_at),
            url=f"/v1/subscriptions/{target}/events?token={token}",
        )
    )
