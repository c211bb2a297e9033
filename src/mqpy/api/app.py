"""The application factory: routes, limits and the error mapping."""

from __future__ import annotations

import logging

from aiohttp import web

from mqpy.api import (
    dashboard,
    dead_letters,
    events,
    health,
    keys,
    messages,
    metrics,
    openapi,
    pull,
    receivers,
    seed,
    status,
    subscriptions,
    topics,
)
from mqpy.api.auth import auth_middleware
from mqpy.api.http_errors import expect_handler
from mqpy.api.problems import PROBLEM_CONTENT_TYPE, Problem, problem_for
from mqpy.api.state import (
    ACCESS,
    BODY_TIMEOUT,
    BROKER,
    KEY_REGISTRY,
    MAX_BATCH_BYTES,
    MAX_MESSAGE_BYTES,
    PULLS,
)
from mqpy.api.types import Handler
from mqpy.auth.access import Access
from mqpy.core.broker import Broker
from mqpy.core.key_registry import KeyRegistry
from mqpy.model.errors import (
    BrokerError,
)
from mqpy.observability import Observer
from mqpy.pull import PullService

log = logging.getLogger("mqpy.api")

# Each route is served with and without a trailing slash: MQ Go registered `/connect/`.
ROUTES: list[tuple[str, str, Handler]] = [
    ("POST", "/connect", seed.connect),
    ("POST", "/send", seed.send),
    ("POST", "/disconnect", seed.disconnect),
    ("GET", "/dashboard", dashboard.dashboard),
    ("GET", "/static/dashboard.css", dashboard.static_file("dashboard.css")),
    ("GET", "/static/dashboard.js", dashboard.static_file("dashboard.js")),
    ("GET", "/static/favicon.svg", dashboard.static_file("favicon.svg")),
    ("GET", "/v1/dead-letters", dead_letters.list_dead_letters),
    ("POST", "/v1/dead-letters/redrive", dead_letters.redrive),
    ("DELETE", "/v1/dead-letters", dead_letters.purge),
    ("POST", "/v1/keys", keys.create_key),
    ("GET", "/v1/keys", keys.list_keys),
    ("DELETE", "/v1/keys/{key_id}", keys.revoke_key),
    ("POST", "/v1/receivers/{receiver_id}/rotate-secret", receivers.rotate_secret),
    ("GET", "/metrics", metrics.metrics),
    ("GET", "/healthz", health.healthz),
    ("GET", "/readyz", health.readyz),
    ("GET", "/v1/status", status.status),
    ("GET", "/openapi.json", openapi.openapi_json),
    # Issue 4: the native API.
    ("GET", "/v1/topics", topics.list_topics),
    ("GET", "/v1/topics/{topic}", topics.get_topic),
    ("POST", "/v1/topics/{topic}/messages", messages.publish),
    ("GET", "/v1/messages/{message_id}", messages.get_message),
    ("POST", "/v1/subscriptions", subscriptions.create),
    ("GET", "/v1/subscriptions", subscriptions.list_subscriptions),
    ("GET", "/v1/subscriptions/{subscription_id}", subscriptions.get),
    ("PATCH", "/v1/subscriptions/{subscription_id}", subscriptions.update),
    ("DELETE", "/v1/subscriptions/{subscription_id}", subscriptions.delete),
    ("POST", "/v1/subscriptions/{subscription_id}/pause", subscriptions.pause),
    ("POST", "/v1/subscriptions/{subscription_id}/seek", subscriptions.seek),
    ("POST", "/v1/subscriptions/{subscription_id}/resume", subscriptions.resume),
    ("POST", "/v1/subscriptions/{subscription_id}/rotate-secret", subscriptions.rotate_secret),
    ("POST", "/v1/subscriptions/{subscription_id}/pull", pull.pull),
    ("POST", "/v1/subscriptions/{subscription_id}/ack", pull.ack),
    ("POST", "/v1/subscriptions/{subscription_id}/nack", pull.nack),
    ("POST", "/v1/subscriptions/{subscription_id}/extend", pull.extend),
    ("GET", "/v1/subscriptions/{subscription_id}/events", events.events),
    ("POST", "/v1/subscriptions/{subscription_id}/events-token", events.events_token),
    ("GET", "/v1/subscriptions/{subscription_id}/dead-letters", dead_letters.list_for_subscription),
    (
        "POST",
        "/v1/subscriptions/{subscription_id}/dead-letters/redrive",
        dead_letters.redrive_for_subscription,
    ),
    (
        "DELETE",
        "/v1/subscriptions/{subscription_id}/dead-letters",
        dead_letters.purge_for_subscription,
    ),
    (
        "POST",
        "/v1/subscriptions/{subscription_id}/dead-letters/{message_id}/redrive",
        dead_letters.redrive_one,
    ),
    (
        "DELETE",
        "/v1/subscriptions/{subscription_id}/dead-letters/{message_id}",
        dead_letters.drop_one,
    ),
]


def create_app(
    broker: Broker,
    access: Access,
    key_registry: KeyRegistry,
    *,
    pulls: PullService,
    observer: Observer,
    max_body_bytes: int,
    max_batch_bytes: int | None = None,
    body_timeout: float = 30.0,
) -> web.Application:
    """`max_body_bytes` limits every request body but a batch publish's, which
    `max_batch_bytes` limits (read_object enforces both, per route)."""
    batch_bytes = max_body_bytes if max_batch_bytes is None else max_batch_bytes
    app = web.Application(
        client_max_size=max(max_body_bytes, batch_bytes),
        middlewares=[problem_middleware, auth_middleware],
    )
    app[MAX_MESSAGE_BYTES] = max_body_bytes
    app[MAX_BATCH_BYTES] = batch_bytes
    app[BROKER] = broker
    app[ACCESS] = access
    app[KEY_REGISTRY] = key_registry
    app[PULLS] = pulls
    app[status.OBSERVER] = observer
    app[BODY_TIMEOUT] = body_timeout
    for method, path, handler in ROUTES:
        for variant in (path, path + "/"):
            if method == "GET":
                # HEAD too, as Go's net/http
                app.router.add_get(variant, handler, expect_handler=expect_handler)
            else:
                app.router.add_route(method, variant, handler, expect_handler=expect_handler)
    app.on_response_prepare.append(_finish_response)
    return app


async def _finish_response(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer names no versions, and every error is problem+json: this catches
    the few errors aiohttp answers itself outside the middleware (such as an
    unsupported `Expect` on a path that matches no route)."""
    request.app[status.OBSERVER].request_served("aiohttp")
    response.headers["Server"] = "mq-py"
    if (
        response.status >= 400
        and isinstance(response, web.Response)
        and response.content_type != PROBLEM_CONTENT_TYPE
    ):
        problem = Problem(response.status, "http-error", response.reason or "error")
        body = problem.to_body(request.path)
        response.body = body
        # The headers were prepared for the old body: without this the new one is cut
        # short (aiohttp's 417 for an unsupported `Expect` on a route without the method).
        if "Content-Length" in response.headers:
            response.headers["Content-Length"] = str(len(body))
        response.content_type = PROBLEM_CONTENT_TYPE


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turns every error into application/problem+json with the right status."""
    try:
        return await handler(request)
    except Problem as problem:
        return problem.to_response(request.path)
    except BrokerError as error:
        return problem_for(error).to_response(request.path)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _problem_for_http(exc, request).to_response(request.path)


def _problem_for_http(exc: web.HTTPException, request: web.Request) -> Problem:
    if isinstance(exc, web.HTTPNotFound):
        return Problem(404, "not-found", f"there is no route {request.path}")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return Problem(
            405,
            "method-not-allowed",
            f"{request.method} is not allowed on {request.path}; use {allowed}",
            headers={"Allow": allowed},
        )
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        limit = request.app._client_max_size
        return Problem(
            413,
            "body-too-large",
            f"the request body is larger than the {limit} bytes this server accepts "
            "(--max-message-bytes)",
        )
    return Problem(exc.status, "http-error", exc.text or exc.reason)
