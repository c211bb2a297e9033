"""/v1/receivers/{id}/rotate-secret: a new signing secret, the old one still signing for
the overlap window."""

from __future__ import annotations

from aiohttp import web

from mqpy.api.problems import Problem
from mqpy.api.responses import json_response
from mqpy.api.state import broker_of, principal_of


async def rotate_secret(request: web.Request) -> web.Response:
    raw = request.match_info["receiver_id"]
    if not raw.isascii() or not raw.isdigit() or len(raw) > 16:
        raise Problem(404, "unknown-connection", f"no receiver is connected with id {raw}")
    receiver_id = int(raw)
    secret = await broker_of(request).rotate_secret(receiver_id, principal_of(request))
    return json_response({"id": receiver_id, "secret": secret})
