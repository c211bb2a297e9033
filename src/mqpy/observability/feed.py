"""The status feed (GET /v1/status): the broker as the dashboard and `mqpy status` see
it. Plain values; the API encodes them as JSON with these field names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mqpy.observability.rates import ThroughputPoint
from mqpy.observability.receivers import Failure, ReceiverState


@dataclass(frozen=True, slots=True)
class TopicStatus:
    topic: str
    receivers: int
    backlog: int
    oldest_undelivered_age_seconds: float | None  # None with nothing undelivered
    publish_rate: float  # messages per second over the last minute
    delivery_rate: float  # acknowledged deliveries per second over the last minute


# How the receiver was made: "seed" by POST /connect, "push" by POST /v1/subscriptions.
ReceiverKind = Literal["push", "seed"]


@dataclass(frozen=True, slots=True)
class ReceiverStatus:
    id: int
    kind: ReceiverKind
    url: str
    topic: str
    group: str | None  # its consumer group, if any
    state: ReceiverState
    in_flight: int
    last_success_at: float | None  # Unix time; None if none since the server started
    consecutive_failures: int
    recent_failures: list[Failure]  # newest first, at most the last 10


@dataclass(frozen=True, slots=True)
class StatusFeed:
    at: float  # Unix time the feed was made
    readers: int
    writers: int
    queue_length: int
    completed_sends: int
    dead_letters: int
    topics: list[TopicStatus]
    receivers: list[ReceiverStatus]
    throughput: list[ThroughputPoint]  # one point a second, oldest first
