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


# How the receiver was made: "seed" by POST /connect, "push" or "pull" (its consumers
# ask; no url) by POST /v1/subscriptions.
ReceiverKind = Literal["push", "pull", "seed"]


@dataclass(frozen=True, slots=True)
class ReceiverStatus:
    id: int
    kind: ReceiverKind
    url: str
    topic: str
    group: str | None  # its consumer group, if any
    # How its deliveries are laid out (mq, cloudevents-binary, cloudevents-structured);
    # None for a pull subscription, whose messages are answers to its consumers.
    format: str | None
    state: ReceiverState
    in_flight: int
    # How many deliveries this node lets it hold at once now (its adaptive window,
    # delivery/window.py); None until it first answered one.
    window: int | None
    last_success_at: float | None  # Unix time; None if it never answered 2xx (kept across restarts)
    consecutive_failures: int
    recent_failures: list[Failure]  # newest first, at most the last 10
    disabled_reason: str | None = None  # why the broker disabled it, if it did


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """A broker process sharing the store, as its last heartbeat described it. Times and
    ages are by the store's clock (the database's, on PostgreSQL), which every node's
    heartbeat is written by, so they hold even when the hosts' clocks disagree."""

    name: str  # host:pid:tag
    address: str  # where it serves HTTP, as it reports it; "" if it did not say
    started_at: float  # Unix time, by the store's clock
    seen_at: float  # its last heartbeat, Unix time by the store's clock
    uptime_seconds: float
    seen_age_seconds: float  # how long ago its last heartbeat was
    held: int  # deliveries it has claimed and not yet settled
    in_flight: int  # of those, being sent right now


@dataclass(frozen=True, slots=True)
class StatusFeed:
    at: float  # Unix time the feed was made
    node: str  # the name of the node that answered, as in `nodes`
    readers: int
    writers: int
    queue_length: int
    completed_sends: int
    dead_letters: int
    topics: list[TopicStatus]
    receivers: list[ReceiverStatus]
    throughput: list[ThroughputPoint]  # one point a second, oldest first
    nodes: list[NodeStatus]  # the live nodes sharing the store, by name
