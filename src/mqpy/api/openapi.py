"""GET /openapi.json: an OpenAPI 3.1 description of every route, the seed protocol's
included. Public: it names routes and shapes, nothing stored.

Routes are described here next to each other so the whole API reads as one table;
their schemas come from the code (api/openapi_schemas.py).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from aiohttp import web

from mqpy import __version__
from mqpy.api.fields import MAX_SUBSCRIPTION_ID
from mqpy.api.openapi_schemas import components, ref
from mqpy.api.pagination import DEFAULT_LIMIT, MAX_LIMIT
from mqpy.api.problems import PROBLEM_CONTENT_TYPE
from mqpy.api.publications import IDEMPOTENCY_HEADER
from mqpy.api.responses import json_response
from mqpy.model.ids import MAX_CONNECTION_ID

JSON = "application/json"
_STR: dict[str, Any] = {"type": "string"}

_ERROR_TEXT = {
    400: "the request is not valid; `detail` says what to fix",
    401: "no API key, or one that is not valid",
    403: "the API key does not allow this",
    404: "no such thing (or not one this key may see)",
    408: "the request body did not arrive in time",
    409: "the request contradicts what is stored",
    413: "the request body is too large",
    429: "too many messages from this key; see Retry-After",
    503: "the store is unavailable or full; nothing was done, see Retry-After",
}
_RETRY_AFTER = {"Retry-After": {"schema": {"type": "string"}, "description": "seconds to wait"}}

# The errors every route behind a key can answer, and those of routes with a body.
PROTECTED = (400, 401, 403, 503)
WITH_BODY = (400, 408, 413)


def _problem(status: int) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": _ERROR_TEXT[status],
        "content": {PROBLEM_CONTENT_TYPE: {"schema": ref("Problem")}},
    }
    if status in (429, 503):
        answer["headers"] = _RETRY_AFTER
    return answer


def _json(schema: str, description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": description,
        "content": {JSON: {"schema": ref(schema)}},
    }
    if headers:
        answer["headers"] = headers
    return answer


_LOCATION = {"Location": {"schema": {"type": "string"}, "description": "where it can be read"}}
_NO_CONTENT = {"description": "done; no content"}


def _param(name: str, where: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "schema": schema,
        "description": description,
    }


_PAGE = [
    _param(
        "limit",
        "query",
        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
        "items per page",
    ),
    _param("cursor", "query", {"type": "string"}, "the previous page's next_cursor"),
]
_TOPIC = _param("topic", "path", {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,200}$"}, "topic")
_SUBSCRIPTION = _param(
    "subscription_id",
    "path",
    {"type": "integer", "minimum": 1, "maximum": MAX_SUBSCRIPTION_ID},
    "a subscription's id",
)
_IDEMPOTENCY = _param(
    IDEMPOTENCY_HEADER,
    "header",
    {"type": "string", "minLength": 1, "maxLength": 200},
    "the same as the idempotency_key field (one message only)",
)


def _operation(
    summary: str,
    tag: str,
    ok: dict[str, dict[str, Any]],
    errors: tuple[int, ...] = PROTECTED,
    *,
    body: str | None = None,
    body_required: bool = True,
    params: list[dict[str, Any]] | None = None,
    public: bool = False,
) -> dict[str, Any]:
    responses = dict(ok)
    for status in sorted(set(errors) | (set(WITH_BODY) if body else set())):
        responses[str(status)] = _problem(status)
    operation: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses}
    if params:
        operation["parameters"] = params
    if body is not None:
        operation["requestBody"] = {
            "required": body_required,
            "content": {JSON: {"schema": ref(body)}},
        }
    if public:
        operation["security"] = []
    return operation


def _seed_paths() -> dict[str, dict[str, Any]]:
    seed_errors = (400, 401, 403, 503)
    return {
        "/connect": {
            "post": _operation(
                "Connect a sender or a receiver (MQ Go protocol)",
                "seed",
                {"200": _json("SeedConnected", "connected")},
                seed_errors,
                body="ConnectRequest",
            )
        },
        "/send": {
            "post": _operation(
                "Publish from a connected sender (MQ Go protocol)",
                "seed",
                {"200": _json("SeedSent", "committed to disk")},
                (*seed_errors, 404, 429),
                body="SendRequest",
                params=[_IDEMPOTENCY],
            )
        },
        "/disconnect": {
            "post": _operation(
                "Disconnect a client (MQ Go protocol)",
                "seed",
                {"200": _json("SeedDisconnected", "disconnected")},
                (*seed_errors, 404),
                body="DisconnectRequest",
            )
        },
        "/dashboard": {
            "get": _operation(
                "The seed's four figures, as a live HTML page",
                "operations",
                {"200": {"description": "the page", "content": {"text/html": {"schema": _STR}}}},
                (503,),
                public=True,
            )
        },
    }


def _operations_paths() -> dict[str, dict[str, Any]]:
    return {
        "/metrics": {
            "get": _operation(
                "Prometheus metrics",
                "operations",
                {
                    "200": {
                        "description": "the exposition",
                        "content": {"text/plain": {"schema": _STR}},
                    }
                },
                (),
                public=True,
            )
        },
        "/healthz": {
            "get": _operation(
                "The process is alive",
                "operations",
                {"200": _json("Health", "alive")},
                (),
                public=True,
            )
        },
        "/readyz": {
            "get": _operation(
                "The store answers",
                "operations",
                {"200": _json("Health", "ready")},
                (503,),
                public=True,
            )
        },
        "/v1/status": {
            "get": _operation(
                "The broker as operators see it (admin)",
                "operations",
                {"200": _json("StatusFeed", "the status feed")},
            )
        },
        "/openapi.json": {
            "get": _operation(
                "This document",
                "operations",
                {
                    "200": {
                        "description": "OpenAPI 3.1",
                        "content": {JSON: {"schema": {"type": "object"}}},
                    }
                },
                (),
                public=True,
            )
        },
        "/v1/keys": {
            "post": _operation(
                "Create an API key (admin); the key is shown once",
                "keys",
                {"201": _json("CreatedKey", "created")},
                body="CreateKeyRequest",
            ),
            "get": _operation("List API keys (admin)", "keys", {"200": _json("KeyList", "keys")}),
        },
        "/v1/keys/{key_id}": {
            "delete": _operation(
                "Revoke an API key (admin); what it connected is disconnected",
                "keys",
                {"204": _NO_CONTENT},
                (*PROTECTED, 404),
                params=[_param("key_id", "path", _STR, "the key's id")],
            )
        },
        "/v1/receivers/{receiver_id}/rotate-secret": {
            "post": _operation(
                "A new signing secret for a receiver; the old one still signs for a while",
                "subscriptions",
                {"200": _json("SecretView", "the new secret, shown once")},
                (*PROTECTED, 404),
                params=[
                    _param(
                        "receiver_id",
                        "path",
                        {"type": "integer", "minimum": 1, "maximum": MAX_CONNECTION_ID},
                        "the receiver's id",
                    )
                ],
            )
        },
    }


_DEAD_MESSAGE = _param("message_id", "path", _STR, "the dead letter's message id, as listed")


def _dead_letter_paths() -> dict[str, dict[str, Any]]:
    return {
        "/v1/dead-letters": {
            "get": _operation(
                "Every dead letter, oldest first (admin)",
                "dead letters",
                {"200": _json("DeadLetterPageView", "a page of dead letters")},
                params=_PAGE,
            ),
            "delete": _operation(
                "Drop every dead letter for good (admin)",
                "dead letters",
                {"200": _json("PurgedView", "how many were dropped")},
            ),
        },
        "/v1/dead-letters/redrive": {
            "post": _operation(
                "Queue dead letters again (all, or one receiver's)",
                "dead letters",
                {"200": _json("RedrivenView", "how many were queued")},
                (*PROTECTED, 404),
                body="RedriveRequest",
                body_required=False,
            )
        },
        "/v1/subscriptions/{subscription_id}/dead-letters": {
            "get": _operation(
                "One subscription's dead letters, oldest first",
                "dead letters",
                {"200": _json("DeadLetterPageView", "a page of dead letters")},
                (*PROTECTED, 404),
                params=[_SUBSCRIPTION, *_PAGE],
            ),
            "delete": _operation(
                "Drop one subscription's dead letters for good",
                "dead letters",
                {"200": _json("PurgedView", "how many were dropped")},
                (*PROTECTED, 404),
                params=[_SUBSCRIPTION],
            ),
        },
        "/v1/subscriptions/{subscription_id}/dead-letters/redrive": {
            "post": _operation(
                "Queue one subscription's dead letters again",
                "dead letters",
                {"200": _json("RedrivenView", "how many were queued")},
                (*PROTECTED, 404),
                params=[_SUBSCRIPTION],
            )
        },
        "/v1/subscriptions/{subscription_id}/dead-letters/{message_id}": {
            "delete": _operation(
                "Drop one subscription's dead letter of one message for good",
                "dead letters",
                {"200": _json("PurgedView", "1: it was dropped")},
                (*PROTECTED, 404),
                params=[_SUBSCRIPTION, _DEAD_MESSAGE],
            ),
        },
        "/v1/subscriptions/{subscription_id}/dead-letters/{message_id}/redrive": {
            "post": _operation(
                "Queue one subscription's dead letter of one message again",
                "dead letters",
                {"200": _json("RedrivenView", "1: it was queued")},
                (*PROTECTED, 404),
                params=[_SUBSCRIPTION, _DEAD_MESSAGE],
            )
        },
    }


def _topic_paths() -> dict[str, dict[str, Any]]:
    return {
        "/v1/topics": {
            "get": _operation(
                "Known topics by name (admin)",
                "topics",
                {"200": _json("TopicPageView", "a page of topics")},
                params=_PAGE,
            )
        },
        "/v1/topics/{topic}": {
            "get": _operation(
                "A topic's figures and the subscriptions that match it (admin)",
                "topics",
                {"200": _json("TopicDetailView", "the topic")},
                (*PROTECTED, 404),
                params=[_TOPIC],
            )
        },
        "/v1/topics/{topic}/messages": {
            "post": {
                **_operation(
                    "Publish one message, or a batch of up to 1000",
                    "messages",
                    {
                        "201": _json("PublishedView", "committed to disk", _LOCATION),
                        "200": {
                            "description": "a repeated idempotency key (nothing enqueued), "
                            "or a batch's results",
                            "content": {
                                JSON: {
                                    "schema": {
                                        "oneOf": [ref("PublishedView"), ref("BatchPublished")]
                                    }
                                }
                            },
                        },
                    },
                    (*PROTECTED, 429),
                    params=[_TOPIC, _IDEMPOTENCY],
                ),
                "requestBody": {
                    "required": True,
                    "content": {
                        JSON: {"schema": {"oneOf": [ref("PublishBody"), ref("BatchBody")]}}
                    },
                },
            }
        },
        "/v1/messages/{message_id}": {
            "get": _operation(
                "A kept message and where each of its deliveries stands",
                "messages",
                {"200": _json("MessageView", "the message")},
                (*PROTECTED, 404),
                params=[_param("message_id", "path", _STR, "the id publishing returned")],
            )
        },
    }


def _subscription_paths() -> dict[str, dict[str, Any]]:
    one = (*PROTECTED, 404)
    return {
        "/v1/subscriptions": {
            "post": _operation(
                "Create a push subscription (its signing secret is shown once) or a pull one",
                "subscriptions",
                {"201": _json("CreatedSubscriptionView", "created", _LOCATION)},
                (*PROTECTED, 409),
                body="CreateSubscriptionBody",
            ),
            "get": _operation(
                "Subscriptions (an admin sees all, others their own)",
                "subscriptions",
                {"200": _json("SubscriptionPageView", "a page of subscriptions")},
                params=[
                    _param("topic", "query", _TOPIC["schema"], "only those matching this topic"),
                    *_PAGE,
                ],
            ),
        },
        "/v1/subscriptions/{subscription_id}": {
            "get": _operation(
                "A subscription",
                "subscriptions",
                {"200": _json("SubscriptionView", "the subscription")},
                one,
                params=[_SUBSCRIPTION],
            ),
            "patch": _operation(
                "Change a subscription (not its topic or group)",
                "subscriptions",
                {"200": _json("SubscriptionView", "as it is now")},
                (*one, 409),
                body="UpdateSubscriptionBody",
                params=[_SUBSCRIPTION],
            ),
            "delete": _operation(
                "End a subscription (a seed receiver: as /disconnect)",
                "subscriptions",
                {"204": _NO_CONTENT},
                one,
                params=[_SUBSCRIPTION],
            ),
        },
        **{
            f"/v1/subscriptions/{{subscription_id}}/{action}": {
                "post": _operation(
                    summary,
                    "subscriptions",
                    {"200": _json(schema, "done")},
                    one,
                    params=[_SUBSCRIPTION],
                )
            }
            for action, summary, schema in (
                ("pause", "Stop delivering (messages are kept)", "SubscriptionView"),
                (
                    "resume",
                    "Deliver again: a paused or a disabled subscription",
                    "SubscriptionView",
                ),
                ("rotate-secret", "A new signing secret, shown once", "SecretView"),
            )
        },
        "/v1/subscriptions/{subscription_id}/seek": {
            "post": _operation(
                "Replay or skip: retained messages published from `time` on are due again "
                "(from attempt 1, in publish order), pending ones before it are acknowledged; "
                "a group member moves its whole group",
                "subscriptions",
                {"200": _json("SoughtView", "what the seek did")},
                one,
                body="SeekBody",
                params=[_SUBSCRIPTION],
            )
        },
        **_pull_paths(),
    }


def _pull_paths() -> dict[str, dict[str, Any]]:
    """A pull subscription's consumers: 409 for a push subscription."""
    pullable = (*PROTECTED, 404, 409)
    paths = {
        f"/v1/subscriptions/{{subscription_id}}/{action}": {
            "post": _operation(
                summary,
                "pull",
                {"200": _json(view, "done; `expired` lists the ack ids that no longer held")},
                pullable,
                body=body,
                params=[_SUBSCRIPTION],
            )
        }
        for action, summary, body, view in (
            ("ack", "Done with pulled messages: they never come again", "AckBody", "AckedView"),
            ("nack", "Hand pulled messages back: due again later", "NackBody", "NackedView"),
            ("extend", "Keep pulled messages leased longer", "ExtendBody", "ExtendedView"),
        )
    }
    paths["/v1/subscriptions/{subscription_id}/pull"] = {
        "post": _operation(
            "Take due messages, leased until the ack deadline; waits up to wait_seconds",
            "pull",
            {"200": _json("PulledView", "the messages (none after wait_seconds)")},
            pullable,
            body="PullBody",
            body_required=False,
            params=[_SUBSCRIPTION],
        )
    }
    events = _operation(
        "The messages as Server-Sent Events (id: the ack id, event: message, data: JSON)",
        "pull",
        {
            "200": {
                "description": "an endless stream; a comment line every 15 s as heartbeat",
                "content": {"text/event-stream": {"schema": _STR}},
            }
        },
        pullable,
        params=[
            _SUBSCRIPTION,
            _param(
                "ack",
                "query",
                {"type": "string", "enum": ["auto", "client"], "default": "client"},
                "auto: each message is acked once written (at most once); client: ack "
                "through POST .../ack",
            ),
            _param(
                "token",
                "query",
                _STR,
                "a token from POST .../events-token, in place of Authorization (which a "
                "browser's EventSource cannot send)",
            ),
        ],
    )
    paths["/v1/subscriptions/{subscription_id}/events"] = {"get": events}
    paths["/v1/subscriptions/{subscription_id}/events-token"] = {
        "post": _operation(
            "A short-lived token that opens the event stream as ?token= (for EventSource)",
            "pull",
            {"200": _json("EventsTokenView", "the token, its expiry and the stream's path")},
            pullable,
            body="EventsTokenBody",
            body_required=False,
            params=[_SUBSCRIPTION],
        )
    }
    return paths


@cache
def document() -> dict[str, Any]:
    """The whole OpenAPI document (the same for every request)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mq-py",
            "version": __version__,
            "description": "A durable HTTP message broker that speaks the MQ Go protocol. "
            "Every error is application/problem+json (RFC 9457). Routes answer with and "
            "without a trailing slash, and HEAD wherever GET.",
        },
        "security": [{"bearer": []}],
        "paths": {
            **_seed_paths(),
            **_operations_paths(),
            **_dead_letter_paths(),
            **_topic_paths(),
            **_subscription_paths(),
        },
        "components": {
            "schemas": components(),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "an API key (`mqpy keys create`), or MQPY_ADMIN_KEY; "
                    "with no key configured the server is open (on loopback only)",
                }
            },
        },
    }


async def openapi_json(request: web.Request) -> web.Response:
    return json_response(document())
