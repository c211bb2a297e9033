"""POST /v1/topics/{topic}/messages (one message, or a batch) and
GET /v1/messages/{message_id}."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from mqpy.api.bodies import MAX_BATCH_MESSAGES, PublishBody
from mqpy.api.fields import check_topic_name
from mqpy.api.problems import Problem, invalid_field
from mqpy.api.publications import IDEMPOTENCY_HEADER, header_idempotency_key, publication
from mqpy.api.requests import convert, read_object
from mqpy.api.responses import json_response
from mqpy.api.state import BROKER, MAX_BATCH_BYTES, MAX_MESSAGE_BYTES, broker_of, principal_of
from mqpy.api.views import PublishedView, message_view
from mqpy.auth.access import Principal
from mqpy.model.domain import Publication
from mqpy.model.errors import UnknownMessage

MAX_MESSAGE_ID_CHARS = 200


async def publish(request: web.Request) -> web.Response:
    topic = check_topic_name(request.match_info["topic"])
    data = await read_object(
        request,
        fold_case=False,
        max_bytes=request.app[MAX_BATCH_BYTES],
        limit_flag="--max-batch-bytes",
    )
    publishing = Publishing(request.app, principal_of(request), request.headers, request.path)
    return await publish_answer(publishing, topic, data)


@dataclass(frozen=True, slots=True)
class Publishing:
    """Who publishes, and what of their request the answer depends on besides its body."""

    app: web.Application
    principal: Principal
    headers: Mapping[str, str]
    path: str  # a rejected message of a batch is named by it


async def publish_answer(publishing: Publishing, topic: str, data: dict[str, Any]) -> web.Response:
    """The answer to a publish to `topic` whose body decoded to `data`: shared by the
    aiohttp route and the fast lane (fast_lane.py), which read requests differently."""
    if "messages" in data:
        return await _publish_batch(publishing, topic, data)
    return await _publish_one(publishing, topic, data)


async def _publish_one(publishing: Publishing, topic: str, data: dict[str, Any]) -> web.Response:
    body = convert(data, PublishBody)
    message = publication(
        body.body,
        body,
        max_body_bytes=publishing.app[MAX_MESSAGE_BYTES],
        header_key=header_idempotency_key(publishing.headers),
    )
    broker = publishing.app[BROKER]
    (published,) = await broker.publish(topic, [message], publishing.principal)
    view = PublishedView(id=published.id, topic=topic, duplicate=published.duplicate)
    if published.duplicate:
        return json_response(view)
    response = json_response(view, status=201)
    response.headers["Location"] = f"/v1/messages/{published.id}"
    return response


async def _publish_batch(publishing: Publishing, topic: str, data: dict[str, Any]) -> web.Response:
    items = _batch_items(publishing.headers, data)
    limit = publishing.app[MAX_MESSAGE_BYTES]
    results: list[dict[str, Any]] = []
    valid: list[Publication] = []
    for index, item in enumerate(items):
        try:
            body = convert(item, PublishBody)
            valid.append(publication(body.body, body, max_body_bytes=limit))
            results.append({})  # filled in once the valid ones are published
        except Problem as problem:
            results.append({"error": problem.to_dict(f"{publishing.path}#/messages/{index}")})
    broker = publishing.app[BROKER]
    published = iter(await broker.publish(topic, valid, publishing.principal) if valid else [])
    for result in results:
        if "error" not in result:
            done = next(published)
            result.update(id=done.id, duplicate=done.duplicate)
    return json_response(
        {"accepted": len(valid), "rejected": len(items) - len(valid), "results": results}
    )


def _batch_items(headers: Mapping[str, str], data: dict[str, Any]) -> list[Any]:
    if IDEMPOTENCY_HEADER in headers:
        raise invalid_field(
            IDEMPOTENCY_HEADER,
            f"the {IDEMPOTENCY_HEADER} header is for a single message; give each message "
            "of a batch its own idempotency_key",
        )
    extra = sorted(set(data) - {"messages"})
    if extra:
        raise invalid_field(
            extra[0], f'a batch is {{"messages": [...]}} alone; `{extra[0]}` does not belong'
        )
    items = data["messages"]
    if not isinstance(items, list):
        raise invalid_field("messages", "messages must be an array of message objects")
    if not 1 <= len(items) <= MAX_BATCH_MESSAGES:
        raise invalid_field(
            "messages",
            f"a batch holds 1 to {MAX_BATCH_MESSAGES} messages, not {len(items)}; "
            "split it into several",
        )
    return items


async def get_message(request: web.Request) -> web.Response:
    message_id = request.match_info["message_id"]
    if len(message_id) > MAX_MESSAGE_ID_CHARS:
        # No id handed out is this long; the store need not look.
        raise UnknownMessage(message_id[:MAX_MESSAGE_ID_CHARS] + "...")
    message = await broker_of(request).message(message_id, principal_of(request))
    return json_response(message_view(message))
