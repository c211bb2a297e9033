"""The broker's own events, published as messages on the topic `mq.events`.

A store publishes each in the transaction that makes the change it reports, so a crash
keeps both or neither: `subscription.disabled` and `subscription.resumed` with the
subscription's state, `delivery.dead_lettered` with the dead letter. Operators
subscribe to `mq.events` (push or pull) like any topic; its messages carry the event's
type as the attribute `type`, so a filter can pick some.

No event ever causes another: a dead letter of an `mq.events` message makes no event,
and failed deliveries of `mq.events` messages do not count towards disabling a
subscription (store/endpoint_health.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mqpy.model.domain import NewMessage, Subscription
from mqpy.model.ids import new_message_ids
from mqpy.model.rfc3339 import rfc3339

# Under `mq.`, the broker's own topics: nobody else publishes there, and a pattern
# starting with a wildcard does not match it (topics.py).
EVENTS_TOPIC = "mq.events"

SUBSCRIPTION_DISABLED = "subscription.disabled"
SUBSCRIPTION_RESUMED = "subscription.resumed"
DELIVERY_DEAD_LETTERED = "delivery.dead_lettered"


@dataclass(frozen=True, slots=True)
class DeadLettered:
    """A delivery that just became a dead letter, as its event reports it."""

    subscription_id: int
    message_id: str
    topic: str  # the message's
    attempts: int
    error: str | None
    status: int | None
    group: str | None = None


def subscription_disabled(subscription: Subscription) -> dict[str, Any]:
    disabled = subscription.disabled
    assert disabled is not None
    return {
        "type": SUBSCRIPTION_DISABLED,
        "time": rfc3339(disabled.at),
        **_subscription_fields(subscription),
        "reason": disabled.reason,
        "failing_since": _maybe_time(subscription.failing_since),
    }


def subscription_resumed(
    subscription: Subscription, at: float, disabled_at: float
) -> dict[str, Any]:
    return {
        "type": SUBSCRIPTION_RESUMED,
        "time": rfc3339(at),
        **_subscription_fields(subscription),
        "disabled_at": rfc3339(disabled_at),
    }


def delivery_dead_lettered(dead: DeadLettered, at: float) -> dict[str, Any]:
    return {
        "type": DELIVERY_DEAD_LETTERED,
        "time": rfc3339(at),
        "subscription_id": dead.subscription_id,
        "group": dead.group,
        "message_id": dead.message_id,
        "topic": dead.topic,
        "attempts": dead.attempts,
        "last_error": dead.error,
        "last_status": dead.status,
    }


def event_messages(events: Sequence[dict[str, Any]], at: float) -> list[NewMessage]:
    """The messages that publish `events` on EVENTS_TOPIC; dead letters of its own
    messages are left out (see the module's doc)."""
    kept = [e for e in events if e["type"] != DELIVERY_DEAD_LETTERED or e["topic"] != EVENTS_TOPIC]
    return [
        NewMessage(
            id=message_id,
            topic=EVENTS_TOPIC,
            body=json.dumps(event, separators=(",", ":")),
            published_at=at,
            publisher_id=None,
            attributes={"type": event["type"]},
        )
        for message_id, event in zip(new_message_ids(len(kept)), kept, strict=True)
    ]


def _subscription_fields(subscription: Subscription) -> dict[str, Any]:
    spec = subscription.spec
    return {
        "subscription_id": subscription.id,
        "topic": spec.topic,
        "group": spec.group,
        "connection_id": subscription.connection_id,
    }


def _maybe_time(seconds: float | None) -> str | None:
    return None if seconds is None else rfc3339(seconds)
