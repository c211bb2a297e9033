"""/v1/subscriptions/{id}/pull, ack, nack and extend: pull subscriptions' consumers."""

from __future__ import annotations

from aiohttp import web

from mqpy.api.bodies import AckBody, ExtendBody, NackBody, PullBody
from mqpy.api.problems import invalid_field
from mqpy.api.requests import convert, read_object
from mqpy.api.responses import json_response
from mqpy.api.state import PULLS, principal_of
from mqpy.api.subscriptions import subscription_id
from mqpy.api.views import AckedView, ExtendedView, NackedView, PulledView, pulled_message_view
from mqpy.pull import AckId


async def pull(request: web.Request) -> web.Response:
    body = convert(await read_object(request, fold_case=False), PullBody)
    pulls = request.app[PULLS]
    pulled = await pulls.pull(
        subscription_id(request),
        principal_of(request),
        max_messages=body.max_messages,
        wait_seconds=body.wait_seconds,
    )
    if client_gone(request):
        # It gave up during the long poll: nobody would see these until the deadline.
        await pulls.give_back(pulled)
    return json_response(PulledView(messages=[pulled_message_view(p) for p in pulled]))


async def ack(request: web.Request) -> web.Response:
    body = convert(await read_object(request, fold_case=False), AckBody)
    settled = await request.app[PULLS].ack(
        subscription_id(request), principal_of(request), parse_ack_ids(body.ack_ids)
    )
    return json_response(AckedView(acked=_texts(settled.done), expired=_texts(settled.expired)))


async def nack(request: web.Request) -> web.Response:
    body = convert(await read_object(request, fold_case=False), NackBody)
    settled = await request.app[PULLS].nack(
        subscription_id(request),
        principal_of(request),
        parse_ack_ids(body.ack_ids),
        body.delay_seconds,
    )
    return json_response(NackedView(nacked=_texts(settled.done), expired=_texts(settled.expired)))


async def extend(request: web.Request) -> web.Response:
    body = convert(await read_object(request, fold_case=False), ExtendBody)
    settled = await request.app[PULLS].extend(
        subscription_id(request), principal_of(request), parse_ack_ids(body.ack_ids), body.seconds
    )
    return json_response(
        ExtendedView(extended=_texts(settled.done), expired=_texts(settled.expired))
    )


def client_gone(request: web.Request) -> bool:
    """The client closed the connection: what it would be sent now is lost."""
    return request.transport is None or request.transport.is_closing()


def parse_ack_ids(texts: list[str]) -> list[AckId]:
    parsed = []
    for text in texts:
        ack_id = AckId.parse(text)
        if ack_id is None:
            raise invalid_field(
                "ack_ids",
                f"{text[:80]!r} is not an ack id; pass the ack_id of a pulled message as given",
            )
        parsed.append(ack_id)
    return parsed


def _texts(ack_ids: list[AckId]) -> list[str]:
    return [str(a) for a in ack_ids]
