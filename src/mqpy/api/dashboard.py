"""GET /dashboard: the seed's four figures in server-rendered HTML, and the static files
of the live view (static/dashboard.js and .css) that keeps the page current from
GET /v1/status and GET /v1/dead-letters.

The page carries no inline script or style, so its Content-Security-Policy can allow
only this server's own files: a message body or receiver URL that slipped into the
page as markup could not run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from html import escape
from importlib import resources

from aiohttp import web

from mqpy import __version__
from mqpy.api.state import ACCESS, broker_of
from mqpy.api.types import Handler

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "img-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)

# The files under src/mqpy/static/ that are served, and their media types.
STATIC_FILES = {
    "dashboard.css": "text/css",
    "dashboard.js": "text/javascript",
    "favicon.svg": "image/svg+xml",
}

_PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",  # the figures are as of this request
}

# The four figures keep the seed's markup, one per line: clients grep for them.
_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>mq-py dashboard</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="/static/favicon.svg">
<link rel="stylesheet" href="/static/dashboard.css">
<script src="/static/dashboard.js" defer></script>
</head>
<body data-keys-required="{keys_required}">
<header class="top">
<h1>mq-py <span class="subtitle">dashboard</span></h1>
<p id="live-status" class="pill" data-state="static" role="status">Figures as of page load</p>
</header>
<main>
<dl class="figures">
<div><dt>Readers</dt><dd id="readers">{readers}</dd></div>
<div><dt>Writers</dt><dd id="writers">{writers}</dd></div>
<div><dt>Queue length</dt><dd id="queue-length">{queue_length}</dd></div>
<div><dt>Completed sends</dt><dd id="completed-sends">{completed}</dd></div>
<div class="live-only" hidden><dt>Dead letters</dt><dd id="dead-letter-count"></dd></div>
</dl>
<p id="no-script" class="card notice">These figures are as of page load. The live view
(topics, receivers, nodes, throughput and dead letters) needs JavaScript.</p>
<section id="key-panel" class="card notice"{key_panel_hidden} aria-labelledby="key-title">
<h2 id="key-title">Admin key needed</h2>
<p>This server uses API keys. Topics, receivers, nodes, throughput and dead letters are
shown with an admin key. It stays in this browser tab (session storage) and is sent only
to this server, as an <code>Authorization</code> header.</p>
<form id="key-form" class="key-form">
<label for="key-input">Admin key</label>
<input id="key-input" type="password" autocomplete="off" spellcheck="false">
<button type="submit">Show live view</button>
</form>
<p id="key-error" class="error" role="alert"></p>
</section>
<div id="live" hidden>
<section class="card" aria-labelledby="throughput-title">
<div class="card-head">
<h2 id="throughput-title">Throughput</h2>
<div class="range" role="group" aria-label="Chart range">
<button type="button" data-seconds="60" aria-pressed="false">1 min</button>
<button type="button" data-seconds="300" aria-pressed="true">5 min</button>
<button type="button" data-seconds="600" aria-pressed="false">10 min</button>
</div>
</div>
<ul class="legend">
<li class="series-published">Published <strong id="tp-published">0</strong></li>
<li class="series-delivered">Delivered <strong id="tp-delivered">0</strong></li>
<li class="series-failed">Failed attempts <strong id="tp-failed">0</strong></li>
<li class="muted" id="tp-summary"></li>
</ul>
<svg id="throughput-chart" class="chart" role="img" aria-label="Throughput"></svg>
</section>
<section class="card" aria-labelledby="lookup-title">
<h2 id="lookup-title">Message lookup</h2>
<form id="lookup-form" class="key-form">
<label for="lookup-input">Message id</label>
<input id="lookup-input" autocomplete="off" spellcheck="false" placeholder="msg_…">
<button type="submit">Look up</button>
</form>
<p id="lookup-error" class="error" role="alert"></p>
<div id="lookup-result" hidden>
<dl id="lookup-fields" class="message-fields"></dl>
<div id="lookup-deliveries"></div>
</div>
</section>
<section class="card" aria-labelledby="topics-title">
<h2 id="topics-title">Topics</h2>
<table id="topics" class="data">
<thead><tr><th>Topic</th><th class="num">Receivers</th><th class="num">Backlog</th>
<th class="num">Oldest undelivered</th><th class="num">Published/s</th>
<th class="num">Delivered/s</th></tr></thead>
<tbody></tbody>
</table>
<p class="empty" id="topics-empty" hidden>No topics yet: nothing was published and no
receiver is connected.</p>
<p class="footnote">Published/s and Delivered/s: messages per second, averaged over the
last minute. A topic marked <span class="badge orphan-badge">no receiver</span> has a
backlog that nothing is subscribed to take.</p>
</section>
<section class="card" aria-labelledby="receivers-title">
<h2 id="receivers-title">Receivers</h2>
<table id="receivers" class="data">
<thead><tr><th>Receiver</th><th>Topic</th><th>Group</th><th>State</th>
<th class="num">In flight</th>
<th class="num" title="How many deliveries this node lets it hold at once now: it grows
while the receiver answers quickly and shrinks when it fails or slows down">Window</th>
<th>Last success</th><th class="num">Failures in a row</th><th>Recent failures</th>
<th>Actions</th></tr>
</thead>
<tbody></tbody>
</table>
<p id="receiver-result" class="result" role="status"></p>
<p class="empty" id="receivers-empty" hidden>No receiver is connected.</p>
</section>
<section class="card" aria-labelledby="nodes-title">
<h2 id="nodes-title">Nodes</h2>
<table id="nodes" class="data">
<thead><tr><th>Node</th><th>Address</th><th class="num">Uptime</th>
<th class="num">Held</th><th class="num">In flight</th><th>Last seen</th></tr></thead>
<tbody></tbody>
</table>
<p class="empty" id="nodes-empty" hidden>No node has sent a heartbeat in the last 10 s.</p>
<p class="footnote">The broker processes sharing this store, each as its last heartbeat
(every 2 s) told it. Held: deliveries it has claimed and not yet settled.</p>
</section>
<section class="card" aria-labelledby="dead-letters-title">
<div class="card-head">
<h2 id="dead-letters-title">Dead letters</h2>
<div class="actions">
<button type="button" id="redrive-all" class="redrive" disabled>Redrive all</button>
<button type="button" id="purge-all" class="danger" disabled>Purge all</button>
</div>
</div>
<p id="redrive-result" class="result" role="status"></p>
<div id="dead-letter-groups"></div>
<p class="empty" id="dead-letters-empty" hidden>No dead letters.</p>
</section>
</div>
</main>
<footer>
<span>mq-py {version}</span>
<button type="button" id="forget-key" class="link" hidden>Forget key</button>
</footer>
</body>
</html>
"""


async def dashboard(request: web.Request) -> web.Response:
    stats = await broker_of(request).stats()
    keys_required = request.app[ACCESS].enabled
    page = _PAGE.format(
        readers=escape(str(stats.receivers)),
        writers=escape(str(stats.senders)),
        queue_length=escape(str(stats.queue_length)),
        completed=escape(str(stats.completed)),
        keys_required="true" if keys_required else "false",
        key_panel_hidden="" if keys_required else " hidden",
        version=escape(__version__),
    )
    return web.Response(text=page, content_type="text/html", headers=_PAGE_HEADERS)


@dataclass(frozen=True, slots=True)
class _StaticFile:
    body: bytes
    etag: str


@cache
def _static_file(name: str) -> _StaticFile:
    """Read once from the installed package: the files change only with the package."""
    body = resources.files("mqpy").joinpath("static", name).read_bytes()
    return _StaticFile(body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')


def static_file(name: str) -> Handler:
    """The handler serving one of STATIC_FILES; browsers revalidate it by ETag."""
    content_type = STATIC_FILES[name]

    async def serve(request: web.Request) -> web.Response:
        file = _static_file(name)
        headers = {
            "ETag": file.etag,
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
        }
        if file.etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers)
        return web.Response(
            body=file.body, content_type=content_type, charset="utf-8", headers=headers
        )

    return serve
