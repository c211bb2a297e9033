"""What the native API answers, as msgspec Structs: the routes encode these, and the
OpenAPI document's schemas are generated from them, so the two cannot drift apart.

Times are RFC 3339 UTC strings with milliseconds; the seed-era routes (dead letters,
keys) keep the Unix-seconds numbers their clients already read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import msgspec

from mqpy.model.domain import (
    Attempt,
    DeadLetter,
    DeliveryStatus,
    StoredMessage,
    Subscription,
    TopicInfo,
)
from mqpy.model.rfc3339 import rfc3339
from mqpy.pull import Pulled

Time = str  # RFC 3339 UTC with milliseconds, as `rfc3339` writes it


class PulledMessageView(msgspec.Struct):
    """A message handed to a pull consumer; `ack_id` settles it (ack, nack, extend)."""

    ack_id: str
    message_id: str
    topic: str
    body: str
    attributes: dict[str, str]
    ordering_key: str | None
    published_at: Time
    attempt: int


class PulledView(msgspec.Struct):
    messages: list[PulledMessageView]


class AckedView(msgspec.Struct):
    """Which ack ids took effect, and which had expired (lease ran out, or the message
    was settled or pulled again since): those messages come again, or came already."""

    acked: list[str]
    expired: list[str]


class NackedView(msgspec.Struct):
    nacked: list[str]
    expired: list[str]


class ExtendedView(msgspec.Struct):
    extended: list[str]
    expired: list[str]


class RetryPolicyView(msgspec.Struct):
    """A subscription's own retry policy; null keeps the broker's setting."""

    max_attempts: int | None
    min_backoff_seconds: float | None
    max_backoff_seconds: float | None
    max_age_seconds: float | None


class SubscriptionView(msgspec.Struct):
    id: int
    kind: Literal["push", "pull", "seed"]  # seed: made by /connect, which /disconnect ends
    url: str | None  # none for pull
    topic: str
    group: str | None
    filter: dict[str, Any] | None
    retry_policy: RetryPolicyView
    max_concurrency: int | None
    max_per_second: float | None
    paused: bool
    created_at: Time
    connection_id: int | None
    ack_deadline_seconds: float | None  # pull only
    # push only: how deliveries are laid out (mq, cloudevents-binary, cloudevents-structured)
    format: Literal["mq", "cloudevents-binary", "cloudevents-structured"] | None
    # active; paused (by an operator); disabled (by the broker, every attempt having
    # failed for its disable-after): a resume turns either back on.
    state: Literal["active", "paused", "disabled"]
    disable_after_seconds: float | None  # push only; null: the broker's --disable-after
    failing_since: Time | None  # every attempt failed since then (push only)
    disabled_at: Time | None
    disabled_reason: str | None


class CreatedSubscriptionView(SubscriptionView):
    secret: str  # the signing secret, shown this once


class SubscriptionPageView(msgspec.Struct):
    subscriptions: list[SubscriptionView]
    next_cursor: str | None


class TopicView(msgspec.Struct):
    name: str
    published: int
    backlog: int
    oldest_published_at: Time | None
    subscriptions: int
    publish_rate: float  # per second, over the last minute (this process, or its group)
    delivery_rate: float


class TopicDetailView(msgspec.Struct):
    """A topic with the subscriptions that match it in place of their count."""

    name: str
    published: int
    backlog: int
    oldest_published_at: Time | None
    subscriptions: list[SubscriptionView]
    publish_rate: float
    delivery_rate: float


class TopicPageView(msgspec.Struct):
    topics: list[TopicView]
    next_cursor: str | None


class AttemptView(msgspec.Struct):
    """One attempt of a delivery: when it was sent, how long it took, how it ended."""

    attempt: int
    subscription_id: int
    sent_at: Time
    duration_ms: float | None
    outcome: Literal["delivered", "retry", "dead"]
    status: int | None
    error: str | None


class DeliveryView(msgspec.Struct):
    subscription_id: int | None
    group: str | None
    state: Literal["waiting", "pending", "delivered", "dead"]
    attempts: int
    last_status: int | None
    last_error: str | None
    next_attempt_at: Time | None
    delivered_at: Time | None
    # Its newest attempts, oldest first (up to 20, and the success that ended them).
    history: list[AttemptView]


class MessageView(msgspec.Struct):
    id: str
    topic: str
    body: str
    attributes: dict[str, str]
    ordering_key: str | None
    published_at: Time
    deliver_at: Time | None
    deliveries: list[DeliveryView]


class PublishedView(msgspec.Struct):
    id: str
    topic: str
    duplicate: bool


class DeadLetterView(msgspec.Struct):
    message_id: str
    receiver_id: int
    attempts: int
    last_error: str | None
    dead_at: float  # Unix seconds, as before issue 4
    body: str
    topic: str
    last_status: int | None
    attributes: dict[str, str]


class DeadLetterPageView(msgspec.Struct):
    dead_letters: list[DeadLetterView]
    next_cursor: str | None


class RedrivenView(msgspec.Struct):
    redriven: int


class PurgedView(msgspec.Struct):
    purged: int


class EventsTokenView(msgspec.Struct):
    token: str  # opens GET .../events as ?token= until expires_at
    expires_at: Time
    url: str  # the stream's path with the token, for EventSource


class SecretView(msgspec.Struct):
    id: int
    secret: str


class SoughtView(msgspec.Struct):
    """What a seek did. A group member's seek moves the whole group's deliveries."""

    id: int
    time: Time  # as asked, in UTC
    due: int  # retained messages from `time` on, due again from attempt 1
    acked: int  # pending deliveries of messages before `time`, settled as acked
    in_flight: int  # from `time` on but out under a live lease: left to finish


def _maybe_time(seconds: float | None) -> Time | None:
    return None if seconds is None else rfc3339(seconds)


def subscription_view(subscription: Subscription) -> SubscriptionView:
    spec = subscription.spec
    return SubscriptionView(
        id=subscription.id,
        kind=_kind(subscription),
        url=None if spec.is_pull else spec.url,
        topic=spec.topic,
        group=spec.group,
        filter=None if spec.filter is None else dict(spec.filter),
        retry_policy=RetryPolicyView(
            max_attempts=spec.retry.max_attempts,
            min_backoff_seconds=spec.retry.min_backoff_seconds,
            max_backoff_seconds=spec.retry.max_backoff_seconds,
            max_age_seconds=spec.retry.max_age_seconds,
        ),
        max_concurrency=spec.max_concurrency,
        max_per_second=spec.max_per_second,
        paused=subscription.paused,
        created_at=rfc3339(subscription.created_at),
        connection_id=subscription.connection_id,
        ack_deadline_seconds=spec.ack_deadline_seconds if spec.is_pull else None,
        format=None if spec.is_pull else spec.format.value,
        state=_state(subscription),
        disable_after_seconds=spec.disable_after_seconds,
        failing_since=_maybe_time(subscription.failing_since),
        disabled_at=None if subscription.disabled is None else rfc3339(subscription.disabled.at),
        disabled_reason=None if subscription.disabled is None else subscription.disabled.reason,
    )


def _state(subscription: Subscription) -> Literal["active", "paused", "disabled"]:
    if subscription.disabled is not None:
        return "disabled"
    return "paused" if subscription.paused else "active"


def _kind(subscription: Subscription) -> Literal["push", "pull", "seed"]:
    if subscription.connection_id is not None:
        return "seed"
    return "pull" if subscription.spec.is_pull else "push"


def _fields(view: msgspec.Struct) -> dict[str, Any]:
    """A view's fields by name, to build a larger view from it."""
    return {name: getattr(view, name) for name in view.__struct_fields__}


def created_subscription_view(subscription: Subscription, secret: str) -> CreatedSubscriptionView:
    return CreatedSubscriptionView(**_fields(subscription_view(subscription)), secret=secret)


def topic_view(info: TopicInfo, rates: tuple[float, float]) -> TopicView:
    return TopicView(
        name=info.name,
        published=info.published,
        backlog=info.backlog,
        oldest_published_at=_maybe_time(info.oldest_published_at),
        subscriptions=info.subscriptions,
        publish_rate=rates[0],
        delivery_rate=rates[1],
    )


def topic_detail_view(
    info: TopicInfo, rates: tuple[float, float], subscriptions: list[Subscription]
) -> TopicDetailView:
    fields = _fields(topic_view(info, rates))
    fields["subscriptions"] = [subscription_view(s) for s in subscriptions]
    return TopicDetailView(**fields)


def _delivery_view(status: DeliveryStatus) -> DeliveryView:
    return DeliveryView(
        subscription_id=status.subscription_id,
        group=status.group,
        state=status.state.value,
        attempts=status.attempts,
        last_status=status.last_status,
        last_error=status.last_error,
        next_attempt_at=_maybe_time(status.next_attempt_at),
        delivered_at=_maybe_time(status.delivered_at),
        history=[_attempt_view(attempt) for attempt in status.history],
    )


def _attempt_view(attempt: Attempt) -> AttemptView:
    return AttemptView(
        attempt=attempt.attempt,
        subscription_id=attempt.subscription_id,
        sent_at=rfc3339(attempt.at),
        duration_ms=None if attempt.duration is None else round(attempt.duration * 1000, 1),
        outcome=attempt.outcome.value,
        status=attempt.status,
        error=attempt.error,
    )


def message_view(message: StoredMessage) -> MessageView:
    return MessageView(
        id=message.id,
        topic=message.topic,
        body=message.body,
        attributes=_plain(message.attributes),
        ordering_key=message.ordering_key,
        published_at=rfc3339(message.published_at),
        deliver_at=_maybe_time(message.deliver_at),
        deliveries=[_delivery_view(d) for d in message.deliveries],
    )


def dead_letter_view(letter: DeadLetter) -> DeadLetterView:
    return DeadLetterView(
        message_id=letter.message_id,
        receiver_id=letter.receiver_id,
        attempts=letter.attempts,
        last_error=letter.last_error,
        dead_at=letter.dead_at,
        body=letter.body,
        topic=letter.topic,
        last_status=letter.last_status,
        attributes=_plain(letter.attributes),
    )


def _plain(attributes: Mapping[str, str]) -> dict[str, str]:
    return dict(attributes)


def pulled_message_view(pulled: Pulled) -> PulledMessageView:
    delivery = pulled.delivery
    return PulledMessageView(
        ack_id=str(pulled.ack_id),
        message_id=delivery.message_id,
        topic=delivery.topic,
        body=delivery.body,
        attributes=_plain(delivery.attributes),
        ordering_key=delivery.ordering_key,
        published_at=rfc3339(delivery.published_at),
        attempt=delivery.attempt,
    )
