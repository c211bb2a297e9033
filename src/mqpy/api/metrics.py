"""GET /metrics: Prometheus metrics in the text format (or OpenMetrics, if asked).

Public like /dashboard: it shows counts, durations and topic names, never a message,
a key or a receiver's URL, and scrapers and probes are simplest without credentials.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from mqpy.api.status import observer_of


async def metrics(request: web.Request) -> web.Response:
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    body = await observer_of(request).scrape(encode)
    return web.Response(body=body, headers={"Content-Type": content_type})
