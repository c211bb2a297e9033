"""GET /dashboard: the seed's four figures, in server-rendered HTML."""

from __future__ import annotations

from html import escape

from aiohttp import web

from mqpy import __version__
from mqpy.api.state import broker_of

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>mq-py dashboard</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
dl {{ display: grid; grid-template-columns: repeat(4, minmax(8rem, 1fr)); gap: 1rem; }}
dl div {{ border: 1px solid #ccc; border-radius: .5rem; padding: 1rem; }}
dt {{ color: #666; }}
dd {{ font-size: 2rem; margin: 0; font-variant-numeric: tabular-nums; }}
</style>
</head>
<body>
<h1>mq-py</h1>
<dl>
<div><dt>Readers</dt><dd id="readers">{readers}</dd></div>
<div><dt>Writers</dt><dd id="writers">{writers}</dd></div>
<div><dt>Queue length</dt><dd id="queue-length">{queue_length}</dd></div>
<div><dt>Completed sends</dt><dd id="completed-sends">{completed}</dd></div>
</dl>
<p><small>mq-py {version}</small></p>
</body>
</html>
"""


async def dashboard(request: web.Request) -> web.Response:
    stats = await broker_of(request).stats()
    page = _PAGE.format(
        readers=stats.receivers,
        writers=stats.senders,
        queue_length=stats.queue_length,
        completed=stats.completed,
        version=escape(__version__),
    )
    return web.Response(text=page, content_type="text/html")
