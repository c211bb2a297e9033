"""/v1/dead-letters: see what could not be delivered, and send it again."""

from __future__ import annotations

from aiohttp import web

from mqpy.api.requests import RedriveRequest, convert, read_object
from mqpy.api.responses import json_response
from mqpy.api.state import broker_of, principal_of


async def list_dead_letters(request: web.Request) -> web.Response:
    letters = await broker_of(request).dead_letters(principal_of(request))
    return json_response(
        {
            "dead_letters": [
                {
                    "message_id": letter.message_id,
                    "receiver_id": letter.receiver_id,
                    "attempts": letter.attempts,
                    "last_error": letter.last_error,
                    "dead_at": letter.dead_at,
                    "body": letter.body,
                }
                for letter in letters
            ]
        }
    )


async def redrive(request: web.Request) -> web.Response:
    body = convert(await read_object(request, allow_empty=True), RedriveRequest)
    count = await broker_of(request).redrive(principal_of(request), body.receiver_id)
    return json_response({"redriven": count})
