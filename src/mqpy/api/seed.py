"""The MQ Go protocol: /connect, /send, /disconnect, word for word."""

from __future__ import annotations

from aiohttp import web

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
from mqpy.api.state import broker_of, principal_of


async def connect(request: web.Request) -> web.Response:
    body = convert(await read_object(request), ConnectRequest)
    mode = parse_mode(body.mode)
    client_url = parse_client_url(body.clienturl, mode)
    connection, secret = await broker_of(request).connect(mode, client_url, principal_of(request))
    if secret is None:
        return json_response({"id": connection.id})
    # The receiver's signing secret is shown here once, never again.
    return json_response({"id": connection.id, "secret": secret})


async def send(request: web.Request) -> web.Response:
    body = convert(await read_object(request), SendRequest)
    sender_id = parse_connection_id(body.id)
    message_id = await broker_of(request).send(sender_id, body.body, principal_of(request))
    return json_response({"status": "Message enqueued.", "id": sender_id, "message_id": message_id})


async def disconnect(request: web.Request) -> web.Response:
    body = convert(await read_object(request), DisconnectRequest)
    connection_id = parse_connection_id(body.id)
    await broker_of(request).disconnect(connection_id, principal_of(request))
    return json_response({"id": connection_id, "message": "Disconnected."})
