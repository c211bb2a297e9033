"""The MQ Go protocol: /connect, /send, /disconnect, word for word.

Issue 4's optional fields (topic, group, filter; attributes, ordering and delays) ride
along; a request without them is answered exactly as MQ Go answered it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from mqpy.api.fields import (
    check_filter,
    check_group,
    check_topic_name,
    check_topic_pattern,
    parse_start_at,
)
from mqpy.api.problems import invalid_field
from mqpy.api.publications import header_idempotency_key, publication
from mqpy.api.requests import (
    ConnectRequest,
    DisconnectRequest,
    SendRequest,
    convert,
    parse_client_url,
    parse_connection_id,
    parse_mode,
    read_object,
)
from mqpy.api.responses import json_response
from mqpy.api.state import BROKER, MAX_MESSAGE_BYTES, principal_of
from mqpy.auth.access import Principal
from mqpy.model.domain import DEFAULT_TOPIC, Mode


async def connect(request: web.Request) -> web.Response:
    data = await read_object(request)
    return await connect_answer(request.app, principal_of(request), request.headers, data)


async def connect_answer(
    app: web.Application, principal: Principal, headers: Mapping[str, str], data: dict[str, Any]
) -> web.Response:
    """The answer to /connect whose body decoded to `data` (the aiohttp route's and the
    fast lane's)."""
    body = convert(data, ConnectRequest)
    mode = parse_mode(body.mode)
    client_url = parse_client_url(body.clienturl, mode)
    connection, secret = await app[BROKER].connect(
        mode,
        client_url,
        principal,
        _connect_topic(body, mode),
        group=check_group(body.group),
        filter=check_filter(body.filter),
        start_at=parse_start_at(body.start_at),
    )
    if secret is None:
        return json_response({"id": connection.id})
    # The receiver's signing secret is shown here once, never again.
    return json_response({"id": connection.id, "secret": secret})


def _connect_topic(body: ConnectRequest, mode: Mode) -> str:
    """A receiver's topic may be a pattern; a sender's is a name, and it has no group or
    filter. An empty topic is a mistake, not a request for the default."""
    topic = DEFAULT_TOPIC if body.topic is None else body.topic
    if mode is Mode.RECEIVE:
        return check_topic_pattern(topic)
    for name, value in (
        ("group", body.group),
        ("filter", body.filter),
        ("start_at", body.start_at),
    ):
        if value is not None:
            raise invalid_field(
                name, f"{name} is only for receivers; a sender publishes to every one"
            )
    return check_topic_name(topic)


async def send(request: web.Request) -> web.Response:
    data = await read_object(request)
    return await send_answer(request.app, principal_of(request), request.headers, data)


async def send_answer(
    app: web.Application, principal: Principal, headers: Mapping[str, str], data: dict[str, Any]
) -> web.Response:
    """The answer to /send whose body decoded to `data` (the aiohttp route's and the
    fast lane's, fast_lane.py: they read requests differently)."""
    body = convert(data, SendRequest)
    sender_id = parse_connection_id(body.id)
    message = publication(
        body.body,
        body,
        max_body_bytes=app[MAX_MESSAGE_BYTES],
        header_key=header_idempotency_key(headers),
    )
    topic = None if body.topic is None else check_topic_name(body.topic)
    published = await app[BROKER].send(sender_id, message, principal, topic)
    answer: dict[str, Any] = {
        "status": "Message enqueued.",
        "id": sender_id,
        "message_id": published.id,
    }
    if published.duplicate:
        answer["duplicate"] = True
    return json_response(answer)


async def disconnect(request: web.Request) -> web.Response:
    data = await read_object(request)
    return await disconnect_answer(request.app, principal_of(request), request.headers, data)


async def disconnect_answer(
    app: web.Application, principal: Principal, headers: Mapping[str, str], data: dict[str, Any]
) -> web.Response:
    """The answer to /disconnect whose body decoded to `data` (the aiohttp route's and
    the fast lane's)."""
    body = convert(data, DisconnectRequest)
    connection_id = parse_connection_id(body.id)
    await app[BROKER].disconnect(connection_id, principal)
    return json_response({"id": connection_id, "message": "Disconnected."})
