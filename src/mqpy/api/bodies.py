"""Request bodies of the native /v1 API, as msgspec Structs.

Unlike the seed protocol's, these take keys as written and refuse unknown ones: a
misspelt optional field (`delay_second`) would otherwise be dropped without a word.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import UNSET, Meta, UnsetType

from mqpy.api.fields import GroupName, RawFilter, TopicPattern
from mqpy.api.requests import MessageFields

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


class CreateSubscriptionBody(msgspec.Struct, forbid_unknown_fields=True):
    url: Url
    topic: TopicPattern = "default"
    group: GroupName | None = None
    filter: RawFilter = None
    retry_policy: RetryPolicyBody | None = None
    max_concurrency: MaxConcurrency | None = None
    max_per_second: MaxPerSecond | None = None
    # The signing secret to use (Standard Webhooks `whsec_` base64, as the broker makes
    # them), so the receiver knows it before the first delivery; else one is generated.
    secret: str | None = None
    paused: bool = False  # created paused: nothing is delivered until it is resumed


class UpdateSubscriptionBody(msgspec.Struct, forbid_unknown_fields=True):
    """A partial update: a field left out stays as it is; null clears it (a null
    retry_policy goes back to the broker's settings)."""

    url: Url | UnsetType = UNSET
    filter: RawFilter | UnsetType = UNSET
    retry_policy: RetryPolicyBody | UnsetType | None = UNSET
    max_concurrency: MaxConcurrency | UnsetType | None = UNSET
    max_per_second: MaxPerSecond | UnsetType | None = UNSET
