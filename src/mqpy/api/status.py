"""GET /v1/status: the broker as operators see it, as JSON (the dashboard's feed).

Admin only once keys are configured: it names every receiver's URL.
"""

from __future__ import annotations

from aiohttp import web

from mqpy.api.responses import json_response
from mqpy.api.state import principal_of
from mqpy.core.broker import require_admin
from mqpy.observability import Observer

# Here rather than in api/state.py so the observability routes stay in their own files.
OBSERVER = web.AppKey("observer", Observer)


def observer_of(request: web.Request) -> Observer:
    return request.app[OBSERVER]


async def status(request: web.Request) -> web.Response:
    require_admin(principal_of(request))
    return json_response(await observer_of(request).status())
