"""GET /healthz (the process is alive) and GET /readyz (the store answers): what a load
balancer or Kubernetes probes. Both are public: probes carry no credentials."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from mqpy.api.problems import Problem
from mqpy.api.responses import json_response
from mqpy.api.status import observer_of
from mqpy.model.errors import StoreUnavailable

log = logging.getLogger("mqpy.api")

# Far over a healthy group commit (milliseconds); probes should allow more than this
# (Kubernetes: timeoutSeconds of 3 or more) so a slow store answers 503, not a timeout.
READY_TIMEOUT_SECONDS = 2.0


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            await observer_of(request).ready()
    except TimeoutError:
        return _not_ready(f"the store did not answer within {READY_TIMEOUT_SECONDS:g} s")
    except StoreUnavailable as exc:
        return _not_ready(str(exc))
    return json_response({"status": "ready"})


def _not_ready(reason: str) -> web.Response:
    log.warning("not ready: %s", reason)
    problem = Problem(
        503, "not-ready", f"not ready to serve: {reason}", headers={"Retry-After": "1"}
    )
    return problem.to_response("/readyz")
