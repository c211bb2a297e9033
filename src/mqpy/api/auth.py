"""Bearer-key authentication: 401 for a missing or unknown key on a protected route.

What a key may do is the broker's business (403); this only establishes who calls.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from urllib.parse import urlsplit

from aiohttp import web

from mqpy.api.problems import Problem
from mqpy.api.state import ACCESS, KEY_REGISTRY, set_principal
from mqpy.api.types import Handler
from mqpy.auth.access import Principal

# Routes anyone may call: they reveal no message, key or receiver URL. The seed
# dashboard's figures, and its script and style (the live view they draw asks for an
# admin key itself); the probes, which carry no credentials; and the Prometheus
# metrics (counts, durations and topic names), so a scraper needs no key that could
# also publish or read. Put /metrics behind a firewall if topic names are secret.
_PUBLIC = (
    "/dashboard",
    "/static/dashboard.css",
    "/static/dashboard.js",
    "/static/favicon.svg",
    "/metrics",
    "/healthz",
    "/readyz",
    # The API's own description, which names routes and shapes and nothing stored.
    "/openapi.json",
)
PUBLIC_PATHS = frozenset(_PUBLIC + tuple(path + "/" for path in _PUBLIC))

_CHALLENGE = 'Bearer realm="mq-py"'
_INVALID_KEY = "the API key is not valid (unknown, revoked or mistyped)"
_INVALID_STREAM_TOKEN = (
    "the token is not valid for this stream: it expired, was made for another "
    "subscription, or its key was revoked; ask POST /v1/subscriptions/{id}/events-token "
    "for a new one, or send 'Authorization: Bearer <key>'"
)
# The one route a `?token=` opens (with or without the trailing slash).
_EVENTS_PATH = re.compile(r"/v1/subscriptions/(\d{1,19})/events/?")


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    refuse_cross_site(request)
    token = bearer_token(request.headers)
    principal = await key_holder(request.app, token)
    stream_token = request.query.get("token") if token is None else None
    if principal is None and stream_token is not None:
        principal = _stream_principal(request, stream_token)
    if principal is None and request.path not in PUBLIC_PATHS:
        if token is None and "token" in request.query and _EVENTS_PATH.fullmatch(request.path):
            raise unauthorized(_INVALID_STREAM_TOKEN)
        raise refusal(request.headers, token)
    if principal is not None:
        set_principal(request, principal)
    return await handler(request)


async def key_holder(app: web.Application, token: str | None) -> Principal | None:
    """Whom the bearer key `token` speaks for (None: no key was sent, which speaks for
    everyone while the server has no keys), or None if nobody."""
    registry = app[KEY_REGISTRY]
    if registry.first_key_made_elsewhere():
        # Another process of the group made the first key a moment ago.
        await registry.follow_first_key()
    access = app[ACCESS]
    principal = access.authenticate(token)
    if principal is None and token is not None:
        # Perhaps a key made a moment ago through another process or node.
        await registry.recheck(token)
        principal = access.authenticate(token)
    return principal


def refusal(headers: Mapping[str, str], token: str | None) -> Problem:
    """The 401 for a request whose bearer key (`token`, None if it sent none) opens
    nothing, saying what was wrong with its Authorization header."""
    return unauthorized(_refusal(headers, token))


def unauthorized(detail: str) -> Problem:
    return Problem(401, "unauthorized", detail, headers={"WWW-Authenticate": _CHALLENGE})


def _stream_principal(request: web.Request, token: str) -> Principal | None:
    """Whom a `?token=` speaks for: on a pull subscription's event stream only (for a
    browser's EventSource, which cannot send Authorization), never on another route."""
    if request.method not in ("GET", "HEAD"):
        return None
    match = _EVENTS_PATH.fullmatch(request.path)
    if match is None:
        return None
    return request.app[ACCESS].stream_principal(token, int(match.group(1)), time.time())


def _refusal(headers: Mapping[str, str], token: str | None) -> str:
    """Why a request is refused: its key is not valid, none was sent, or one was sent
    without its scheme (a bare key, or another scheme such as Basic)."""
    if token is not None:
        return _INVALID_KEY
    header = headers.get("Authorization", "").strip()
    if not header:
        return "this server needs an API key: send it as 'Authorization: Bearer <key>'"
    scheme, _, rest = header.partition(" ")
    if not rest.strip():
        if scheme.lower() == "bearer":
            return (
                "the Authorization header says Bearer but no key follows it: "
                "send 'Authorization: Bearer <key>'"
            )
        return (
            "the Authorization header has a key but not its scheme: send it as "
            "'Authorization: Bearer <key>', with 'Bearer ' before the key"
        )
    return (
        f"the Authorization header uses the {scheme[:20]!r} scheme, which this server does not "
        "take: send the API key as 'Authorization: Bearer <key>'"
    )


def bearer_token(headers: Mapping[str, str]) -> str | None:
    header = headers.get("Authorization", "")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def refuse_cross_site(request: web.Request) -> None:
    """A web page on another site must not make a browser act on this broker (which,
    with no key configured, accepts anyone): browsers send `Origin` with such requests,
    and only this server's own pages (the dashboard) may change anything."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    origin = request.headers.get("Origin")
    if origin is None:
        return  # not a browser making a cross-site request: curl, clients, receivers
    if origin == "null" or urlsplit(origin).netloc.lower() != request.host.lower():
        raise Problem(
            403,
            "cross-site-request",
            f"requests from web pages at {origin} are refused; call the API from a "
            "program, or from this server's own dashboard",
        )
