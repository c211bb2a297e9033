"""/v1/subscriptions: push subscriptions (seed /connect receivers among them)."""

from __future__ import annotations

from aiohttp import web
from msgspec import UNSET

from mqpy.api.bodies import (
    CreateSubscriptionBody,
    RetryPolicyBody,
    SeekBody,
    UpdateSubscriptionBody,
)
from mqpy.api.fields import (
    check_filter,
    check_group,
    check_topic_name,
    check_topic_pattern,
    parse_start_at,
    parse_subscription_id,
    parse_timestamp,
)
from mqpy.api.pagination import page_query
from mqpy.api.problems import invalid_field
from mqpy.api.requests import convert, parse_client_url, read_object
from mqpy.api.responses import json_response
from mqpy.api.state import broker_of, principal_of
from mqpy.api.views import (
    SecretView,
    SoughtView,
    SubscriptionPageView,
    created_subscription_view,
    subscription_view,
)
from mqpy.model.domain import (
    DEFAULT_ACK_DEADLINE_SECONDS,
    DeliveryFormat,
    Mode,
    RetryOverrides,
    SubscriptionChanges,
    SubscriptionKind,
    SubscriptionSpec,
)
from mqpy.model.errors import UnknownConnection, UnknownSubscription
from mqpy.model.rfc3339 import rfc3339
from mqpy.wire.signing import check_secret

# What PATCH cannot change: the subscription would be another one.
_FIXED_FIELDS = ("topic", "group")


def subscription_id(request: web.Request) -> int:
    return parse_subscription_id(request.match_info["subscription_id"])


async def create(request: web.Request) -> web.Response:
    body = convert(await read_object(request, fold_case=False), CreateSubscriptionBody)
    check_kind_fields(body)
    spec = SubscriptionSpec(
        url="" if body.url is None else parse_client_url(body.url, Mode.RECEIVE, field="url"),
        topic=check_topic_pattern(body.topic),
        group=check_group(body.group),
        filter=check_filter(body.filter),
        retry=retry_overrides(body.retry_policy),
        max_concurrency=body.max_concurrency,
        max_per_second=body.max_per_second,
        kind=SubscriptionKind(body.kind),
        ack_deadline_seconds=body.ack_deadline_seconds or DEFAULT_ACK_DEADLINE_SECONDS,
        format=DeliveryFormat(body.format or DeliveryFormat.MQ),
        disable_after_seconds=body.disable_after_seconds,
    )
    subscription, secret = await broker_of(request).create_subscription(
        spec,
        principal_of(request),
        secret=_chosen_secret(body.secret),
        paused=body.paused,
        start_at=parse_start_at(body.start_at),
    )
    response = json_response(created_subscription_view(subscription, secret), status=201)
    response.headers["Location"] = f"/v1/subscriptions/{subscription.id}"
    return response


def _chosen_secret(secret: str | None) -> str | None:
    if secret is None:
        return None
    wrong = check_secret(secret)
    if wrong is not None:
        raise invalid_field(
            "secret",
            f"the secret is not a Standard Webhooks signing secret: {wrong}; leave it out "
            "and the broker makes one (such as whsec_ and 32 random bytes in base64)",
        )
    return secret


# Fields that only make sense for one kind of subscription.
_PUSH_ONLY = ("url", "max_concurrency", "max_per_second", "format", "disable_after_seconds")
_PULL_ONLY = ("ack_deadline_seconds",)


def check_kind_fields(body: CreateSubscriptionBody) -> None:
    """A push subscription needs a url; a pull one has none, and no pace or cap (its
    consumers take what they ask for); an ack deadline is a pull subscription's."""
    if body.kind == "push" and body.url is None:
        raise invalid_field(
            "url", 'a push subscription needs a url to POST messages to (or use "kind": "pull")'
        )
    refused, other = (_PUSH_ONLY, "push") if body.kind == "pull" else (_PULL_ONLY, "pull")
    for name in refused:
        if getattr(body, name) is not None:
            raise invalid_field(
                name, f"{name} applies to {other} subscriptions only; this one is {body.kind}"
            )


def retry_overrides(policy: RetryPolicyBody | None) -> RetryOverrides:
    if policy is None:
        return RetryOverrides()
    low, high = policy.min_backoff_seconds, policy.max_backoff_seconds
    if low is not None and high is not None and low > high:
        raise invalid_field(
            "retry_policy",
            f"min_backoff_seconds ({low:g}) is more than max_backoff_seconds ({high:g})",
        )
    return RetryOverrides(
        max_attempts=policy.max_attempts,
        min_backoff_seconds=low,
        max_backoff_seconds=high,
        max_age_seconds=policy.max_age_seconds,
    )


async def list_subscriptions(request: web.Request) -> web.Response:
    query = page_query(request)
    topic = request.query.get("topic")
    page = await broker_of(request).subscriptions(
        principal_of(request),
        topic=None if topic is None else check_topic_name(topic),
        cursor=query.cursor,
        limit=query.limit,
    )
    return json_response(
        SubscriptionPageView(
            subscriptions=[subscription_view(s) for s in page.items],
            next_cursor=page.next_cursor,
        )
    )


async def get(request: web.Request) -> web.Response:
    subscription = await broker_of(request).subscription(
        subscription_id(request), principal_of(request)
    )
    return json_response(subscription_view(subscription))


async def update(request: web.Request) -> web.Response:
    target = subscription_id(request)
    data = await read_object(request, fold_case=False)
    for name in _FIXED_FIELDS:
        if name in data:
            raise invalid_field(
                name,
                f"a subscription's {name} cannot change; create a new subscription "
                "and delete this one",
            )
    changes = _changes(convert(data, UpdateSubscriptionBody))
    updated = await broker_of(request).update_subscription(target, changes, principal_of(request))
    return json_response(subscription_view(updated))


def _changes(body: UpdateSubscriptionBody) -> SubscriptionChanges:
    url = None
    if body.url is not UNSET:
        url = parse_client_url(body.url, Mode.RECEIVE, field="url")
    filter_ = None if body.filter is UNSET else check_filter(body.filter)
    retry = None
    if body.retry_policy is not UNSET:
        retry = retry_overrides(body.retry_policy)
    return SubscriptionChanges(
        url=url,
        filter=filter_,
        clear_filter=body.filter is None,
        retry=retry,
        max_concurrency=body.max_concurrency if isinstance(body.max_concurrency, int) else None,
        clear_max_concurrency=body.max_concurrency is None,
        max_per_second=body.max_per_second if isinstance(body.max_per_second, float) else None,
        clear_max_per_second=body.max_per_second is None,
        format=None if body.format is UNSET else DeliveryFormat(body.format),
        disable_after_seconds=(
            body.disable_after_seconds if isinstance(body.disable_after_seconds, float) else None
        ),
        clear_disable_after=body.disable_after_seconds is None,
    )


async def pause(request: web.Request) -> web.Response:
    return await _set_paused(request, paused=True)


async def resume(request: web.Request) -> web.Response:
    return await _set_paused(request, paused=False)


async def _set_paused(request: web.Request, *, paused: bool) -> web.Response:
    updated = await broker_of(request).set_paused(
        subscription_id(request), paused, principal_of(request)
    )
    return json_response(subscription_view(updated))


async def seek(request: web.Request) -> web.Response:
    target = subscription_id(request)
    body = convert(await read_object(request, fold_case=False), SeekBody)
    time = parse_timestamp(body.time, "time")
    result = await broker_of(request).seek(target, time, principal_of(request))
    return json_response(
        SoughtView(
            id=target,
            time=rfc3339(time),
            due=result.due,
            acked=result.acked,
            in_flight=result.in_flight,
        )
    )


async def delete(request: web.Request) -> web.Response:
    await broker_of(request).delete_subscription(subscription_id(request), principal_of(request))
    return web.Response(status=204)


async def rotate_secret(request: web.Request) -> web.Response:
    target = subscription_id(request)
    try:
        secret = await broker_of(request).rotate_secret(target, principal_of(request))
    except UnknownConnection:
        # The broker speaks of receivers; on this route the caller named a subscription.
        raise UnknownSubscription(target) from None
    return json_response(SecretView(id=target, secret=secret))
