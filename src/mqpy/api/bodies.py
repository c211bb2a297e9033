"""Request bodies of the native /v1 API, as msgspec Structs.

Unlike the seed protocol's, these take keys as written and refuse unknown ones: a
misspelt optional field (`delay_second`) would otherwise be dropped without a word.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from mqpy.api.fields import GroupName, RawFilter, StartAtText, Timestamp, TopicPattern
from mqpy.api.requests import MessageFields
from mqpy.auth.stream_tokens import DEFAULT_TTL_SECONDS, MAX_TTL_SECONDS, MIN_TTL_SECONDS

MAX_BATCH_MESSAGES = 1000
MAX_BACKOFF_SECONDS = 31_536_000  # a year: far past any useful retry, short of overflow


class PublishBody(MessageFields, kw_only=True, forbid_unknown_fields=True):
    """One message to publish."""

    body: str


class BatchBody(msgspec.Struct, forbid_unknown_fields=True):
    """Messages to publish together; each is checked on its own (see the results)."""

    messages: Annotated[list[PublishBody], Meta(min_length=1, max_length=MAX_BATCH_MESSAGES)]


Seconds = Annotated[float, Meta(gt=0, le=MAX_BACKOFF_SECONDS)]


class RetryPolicyBody(msgspec.Struct, forbid_unknown_fields=True):
    """A subscription's own retry policy; a field left out keeps the broker's setting."""

    max_attempts: Annotated[int, Meta(ge=1, le=100)] | None = None
    min_backoff_seconds: Seconds | None = None
    max_backoff_seconds: Seconds | None = None
    max_age_seconds: Seconds | None = None


MaxConcurrency = Annotated[int, Meta(ge=1, le=1000, description="deliveries in flight at once")]
MaxPerSecond = Annotated[float, Meta(gt=0, le=100_000, description="deliveries started per second")]
Url = Annotated[
    str,
    Meta(
        min_length=1,
        extra_json_schema={"format": "uri"},
        description="the http:// or https:// URL messages are POSTed to",
    ),
]


AckDeadline = Annotated[
    float,
    Meta(
        ge=1,
        le=600,
        description="seconds a pulled message stays leased to its consumer before it "
        "is delivered again, unless acked or extended",
    ),
]
DisableAfter = Annotated[
    float,
    Meta(
        ge=1,
        le=MAX_BACKOFF_SECONDS,
        description="seconds every attempt may fail before the subscription is disabled "
        "(push only; null: the broker's --disable-after)",
    ),
]
Kind = Annotated[
    Literal["push", "pull"],
    Meta(description="push: the broker POSTs each message to url; pull: consumers ask"),
]

Format = Annotated[
    Literal["mq", "cloudevents-binary", "cloudevents-structured"],
    Meta(
        description='how a push delivery is laid out: mq (the seed\'s {"body": ...}), or a '
        "CloudEvents 1.0 event in HTTP binary mode (ce-* headers, the body as data) or "
        "structured mode (application/cloudevents+json)"
    ),
]


class CreateSubscriptionBody(msgspec.Struct, forbid_unknown_fields=True):
    url: Url | None = None  # push only, and required there
    kind: Kind = "push"
    ack_deadline_seconds: AckDeadline | None = None  # pull only; 30 when left out
    topic: TopicPattern = "default"
    group: GroupName | None = None
    filter: RawFilter = None
    retry_policy: RetryPolicyBody | None = None
    max_concurrency: MaxConcurrency | None = None
    max_per_second: MaxPerSecond | None = None
    format: Format | None = None  # push only; mq when left out
    disable_after_seconds: DisableAfter | None = None  # push only
    # The signing secret to use (Standard Webhooks `whsec_` base64, as the broker makes
    # them), so the receiver knows it before the first delivery; else one is generated.
    secret: str | None = None
    paused: bool = False  # created paused: nothing is delivered until it is resumed
    start_at: StartAtText | None = None  # "new" when left out


class UpdateSubscriptionBody(msgspec.Struct, forbid_unknown_fields=True):
    """A partial update: a field left out stays as it is; null clears it (a null
    retry_policy goes back to the broker's settings)."""

    url: Url | UnsetType = UNSET
    filter: RawFilter | UnsetType = UNSET
    retry_policy: RetryPolicyBody | UnsetType | None = UNSET
    max_concurrency: MaxConcurrency | UnsetType | None = UNSET
    max_per_second: MaxPerSecond | UnsetType | None = UNSET
    format: Format | UnsetType = UNSET
    disable_after_seconds: DisableAfter | UnsetType | None = UNSET


class SeekBody(msgspec.Struct, forbid_unknown_fields=True):
    """Where to move a subscription: what was published from `time` on is due again,
    what came before is acknowledged."""

    time: Timestamp


# Pull subscriptions: what a consumer asks for, and how it settles what it got.
MAX_PULL_MESSAGES = 1000
MAX_PULL_WAIT_SECONDS = 30
AckIds = Annotated[
    list[str],
    Meta(
        min_length=1,
        max_length=MAX_PULL_MESSAGES,
        description="ack ids as pulls handed them out",
    ),
]


class PullBody(msgspec.Struct, forbid_unknown_fields=True):
    max_messages: Annotated[int, Meta(ge=1, le=MAX_PULL_MESSAGES)] = 100
    # How long to wait for a first message when none is due; 0 answers at once.
    wait_seconds: Annotated[float, Meta(ge=0, le=MAX_PULL_WAIT_SECONDS)] = 0


class AckBody(msgspec.Struct, forbid_unknown_fields=True):
    ack_ids: AckIds


class NackBody(msgspec.Struct, forbid_unknown_fields=True):
    ack_ids: AckIds
    # Due again after this long; left out, after the retry policy's backoff.
    delay_seconds: Annotated[float, Meta(ge=0, le=3600)] | None = None


class ExtendBody(msgspec.Struct, forbid_unknown_fields=True):
    ack_ids: AckIds
    # The new deadline, counted from now.
    seconds: AckDeadline


class EventsTokenBody(msgspec.Struct, forbid_unknown_fields=True):
    """How long a token for a pull subscription's event stream is good for."""

    ttl_seconds: Annotated[
        int,
        Meta(
            ge=MIN_TTL_SECONDS,
            le=MAX_TTL_SECONDS,
            description="seconds until the token no longer opens the stream (a stream "
            "already open stays open)",
        ),
    ] = DEFAULT_TTL_SECONDS
