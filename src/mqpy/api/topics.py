"""GET /v1/topics and GET /v1/topics/{topic}: what is published where, and how fast."""

from __future__ import annotations

from aiohttp import web

from mqpy.api.fields import check_topic_name
from mqpy.api.pagination import page_query
from mqpy.api.responses import json_response
from mqpy.api.state import broker_of, principal_of
from mqpy.api.status import observer_of
from mqpy.api.views import TopicPageView, topic_detail_view, topic_view


async def list_topics(request: web.Request) -> web.Response:
    query = page_query(request)
    page = await broker_of(request).topics(
        principal_of(request), cursor=query.cursor, limit=query.limit
    )
    observer = observer_of(request)
    return json_response(
        TopicPageView(
            topics=[topic_view(info, observer.topic_rates(info.name)) for info in page.items],
            next_cursor=page.next_cursor,
        )
    )


async def get_topic(request: web.Request) -> web.Response:
    name = check_topic_name(request.match_info["topic"])
    info, subscriptions = await broker_of(request).topic(name, principal_of(request))
    rates = observer_of(request).topic_rates(name)
    return json_response(topic_detail_view(info, rates, subscriptions))
