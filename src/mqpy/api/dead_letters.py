"""Dead letters: see what could not be delivered, send it again, or drop it; all of them
(/v1/dead-letters, admin only), one subscription's, or one subscription's dead letter of
one message (its owner may too)."""

from __future__ import annotations

from aiohttp import web

from mqpy.api.fields import parse_subscription_id
from mqpy.api.pagination import page_query
from mqpy.api.requests import RedriveRequest, convert, read_object
from mqpy.api.responses import json_response
from mqpy.api.state import broker_of, principal_of
from mqpy.api.views import DeadLetterPageView, PurgedView, RedrivenView, dead_letter_view


async def list_dead_letters(request: web.Request) -> web.Response:
    return await _list(request, None)


async def redrive(request: web.Request) -> web.Response:
    body = convert(await read_object(request, allow_empty=True), RedriveRequest)
    count = await broker_of(request).redrive(principal_of(request), body.receiver_id)
    return json_response(RedrivenView(redriven=count))


async def purge(request: web.Request) -> web.Response:
    count = await broker_of(request).purge_dead_letters(principal_of(request))
    return json_response(PurgedView(purged=count))


async def list_for_subscription(request: web.Request) -> web.Response:
    return await _list(request, await _subscription_id(request))


async def redrive_for_subscription(request: web.Request) -> web.Response:
    subscription_id = await _subscription_id(request)
    count = await broker_of(request).redrive(principal_of(request), subscription_id)
    return json_response(RedrivenView(redriven=count))


async def purge_for_subscription(request: web.Request) -> web.Response:
    subscription_id = await _subscription_id(request)
    count = await broker_of(request).purge_dead_letters(principal_of(request), subscription_id)
    return json_response(PurgedView(purged=count))


async def redrive_one(request: web.Request) -> web.Response:
    subscription_id = parse_subscription_id(request.match_info["subscription_id"])
    message_id = request.match_info["message_id"]
    await broker_of(request).redrive_dead_letter(principal_of(request), subscription_id, message_id)
    return json_response(RedrivenView(redriven=1))


async def drop_one(request: web.Request) -> web.Response:
    subscription_id = parse_subscription_id(request.match_info["subscription_id"])
    message_id = request.match_info["message_id"]
    await broker_of(request).drop_dead_letter(principal_of(request), subscription_id, message_id)
    return json_response(PurgedView(purged=1))


async def _list(request: web.Request, subscription_id: int | None) -> web.Response:
    query = page_query(request)
    page = await broker_of(request).dead_letters(
        principal_of(request),
        subscription_id=subscription_id,
        cursor=query.cursor,
        limit=query.limit,
    )
    return json_response(
        DeadLetterPageView(
            dead_letters=[dead_letter_view(letter) for letter in page.items],
            next_cursor=page.next_cursor,
        )
    )


async def _subscription_id(request: web.Request) -> int:
    """The path's subscription, which must exist and be the caller's (else 404)."""
    subscription_id = parse_subscription_id(request.match_info["subscription_id"])
    await broker_of(request).subscription(subscription_id, principal_of(request))
    return subscription_id
