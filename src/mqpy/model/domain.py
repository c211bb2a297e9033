"""The broker's vocabulary: plain values passed between the API, the core and the store.

Nothing here knows about HTTP or SQL.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from mqpy.model.errors import BadCursor
from mqpy.model.topics import TOPIC_NAME

DEFAULT_TOPIC = "default"

T = TypeVar("T")

# A filter on message attributes, one condition per attribute, all of which must hold:
# "value" (equal), ["a", "b"] (any of), {"prefix": "ord"}, {"exists": true|false}.
# Checked when it is made (mqpy.model.filters.parse_filter), so the store keeps it as given.
Condition = str | list[str] | dict[str, str | bool]
Filter = Mapping[str, Condition]


class Mode(enum.StrEnum):
    """What a seed-protocol connection does: publish messages, or receive them."""

    SEND = "send"
    RECEIVE = "receive"


@dataclass(frozen=True, slots=True)
class Connection:
    """A client registered through `/connect`.

    A receiving connection is also a push subscription on its topic whose id is the
    connection id, so dead letters name the receiver by the id the client knows.
    """

    id: int
    mode: Mode
    client_url: str
    topic: str
    connected_at: float
    key_id: str | None = None  # the API key that made it, which alone may use it


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message about to be published; `id` is the opaque id receivers deduplicate on."""

    id: str
    topic: str
    body: str
    published_at: float
    publisher_id: int | None
    attributes: Mapping[str, str] = field(default_factory=dict)
    ordering_key: str | None = None
    deliver_at: float | None = None  # not before this time; None means at once
    # With a key, a repeat from the same API key within the dedup window enqueues
    # nothing and answers with the first message's id.
    idempotency_key: str | None = None
    publisher_key: str | None = None  # the API key id that published it


@dataclass(frozen=True, slots=True)
class Publication:
    """A message as a publisher asks for it, before the broker names and stamps it."""

    body: str
    attributes: Mapping[str, str] = field(default_factory=dict)
    ordering_key: str | None = None
    deliver_at: float | None = None  # Unix seconds
    delay_seconds: float | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class Published:
    """What a publish did: the message's id, and whether it repeated an earlier one
    (same idempotency key within the window), in which case nothing was enqueued."""

    id: str
    duplicate: bool = False
    deliveries: int = 0
    # Every one of its deliveries was claimed for this process's dispatcher in the
    # publish's own transaction (`Store.offer_claim`): nobody needs waking for them.
    claimed: bool = False


@dataclass(frozen=True, slots=True)
class RetryOverrides:
    """A subscription's own retry policy; None keeps the broker's setting."""

    max_attempts: int | None = None
    min_backoff_seconds: float | None = None
    max_backoff_seconds: float | None = None
    max_age_seconds: float | None = None


class SubscriptionKind(enum.StrEnum):
    """How a subscription's messages go out: the broker POSTs them to its `url`
    (push), or consumers ask for them and acknowledge each (pull)."""

    PUSH = "push"
    PULL = "pull"


# How long a pulled message stays leased to its consumer unless acked or extended.
DEFAULT_ACK_DEADLINE_SECONDS = 30.0


class DeliveryFormat(enum.StrEnum):
    """How a push delivery is laid out: the seed's `{"body": ...}` (mq), or a
    CloudEvents 1.0 event in HTTP binary mode (`ce-*` headers, the body as data) or
    structured mode (one `application/cloudevents+json` document)."""

    MQ = "mq"
    CLOUDEVENTS_BINARY = "cloudevents-binary"
    CLOUDEVENTS_STRUCTURED = "cloudevents-structured"


@dataclass(frozen=True, slots=True)
class SubscriptionSpec:
    """What a subscription is asked to be. A pull subscription has no url (empty)."""

    url: str
    topic: str  # a topic name or a pattern (`orders.*`, `orders.>`)
    group: str | None = None
    filter: Filter | None = None
    retry: RetryOverrides = RetryOverrides()
    max_concurrency: int | None = None  # deliveries in flight at once to this receiver
    max_per_second: float | None = None  # deliveries started per second
    kind: SubscriptionKind = SubscriptionKind.PUSH
    # Pull only: how long a pulled message is leased to its consumer.
    ack_deadline_seconds: float = DEFAULT_ACK_DEADLINE_SECONDS
    format: DeliveryFormat = DeliveryFormat.MQ  # how a delivery is laid out
    # Push only: disabled once every attempt failed for this long (None: the broker's
    # --disable-after).
    disable_after_seconds: float | None = None

    @property
    def is_pull(self) -> bool:
        return self.kind is SubscriptionKind.PULL


@dataclass(frozen=True, slots=True)
class Subscription:
    """A push subscription. A seed `/connect` receiver is one too, with
    `connection_id` equal to its id."""

    id: int
    spec: SubscriptionSpec
    created_at: float
    paused: bool = False
    key_id: str | None = None
    connection_id: int | None = None
    # Since when every attempt failed (None: the latest succeeded, or none was made).
    failing_since: float | None = None
    # Set when the broker disabled it for failing too long (endpoint_health.py): nothing
    # is delivered to it until it is resumed.
    disabled: Disabled | None = None


@dataclass(frozen=True, slots=True)
class Disabled:
    """When and why the broker disabled a push subscription."""

    at: float
    reason: str


# Where a new subscription starts (`start_at`): None is "new" (only what is published
# from now on); a time replays the retained messages published at or after it, and
# EARLIEST, before any message, replays all of them.
StartAt = float | None
EARLIEST = 0.0


@dataclass(frozen=True, slots=True)
class SeekResult:
    """What a seek did to a subscription's (or its group's) deliveries."""

    due: int  # retained messages at or after the time, due again from attempt 1
    acked: int  # pending deliveries of messages before the time, settled as acked
    in_flight: int  # at or after the time but out under a live lease: left to finish


@dataclass(frozen=True, slots=True)
class SubscriptionChanges:
    """A partial update; None leaves a field as it is. `clear_*` sets it to none."""

    url: str | None = None
    filter: Filter | None = None
    clear_filter: bool = False
    retry: RetryOverrides | None = None
    max_concurrency: int | None = None
    clear_max_concurrency: bool = False
    max_per_second: float | None = None
    clear_max_per_second: bool = False
    format: DeliveryFormat | None = None
    disable_after_seconds: float | None = None
    clear_disable_after: bool = False


class DeliveryState(enum.StrEnum):
    """Where one message stands with one subscription."""

    WAITING = "waiting"  # due later (delayed, or backing off before a retry)
    PENDING = "pending"  # due now, or being attempted
    DELIVERED = "delivered"
    DEAD = "dead"


class AttemptOutcome(enum.StrEnum):
    """How one attempt of a delivery ended."""

    DELIVERED = "delivered"  # the receiver acknowledged it
    RETRY = "retry"  # it failed and will be tried again
    DEAD = "dead"  # it failed and no tries were left: a dead letter


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt of a delivery, as its history keeps it."""

    attempt: int  # its number, counted from 1 again after a redrive
    subscription_id: int  # who it was sent to (a group's member)
    at: float  # when it was sent
    duration: float | None  # seconds until the answer or the failure
    outcome: AttemptOutcome
    status: int | None  # the receiver's HTTP status, if it answered
    error: str | None  # why it failed, if it did


@dataclass(frozen=True, slots=True)
class DeliveryStatus:
    """One message's delivery to one subscription, as an operator sees it."""

    subscription_id: int | None  # None for a group delivery not attempted yet
    group: str | None
    state: DeliveryState
    attempts: int
    last_status: int | None
    last_error: str | None
    next_attempt_at: float | None
    delivered_at: float | None = None
    history: tuple[Attempt, ...] = ()  # its latest attempts, oldest first


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message as kept, with where each of its deliveries stands. Fully delivered
    messages are kept for the retention window."""

    id: str
    topic: str
    body: str
    attributes: Mapping[str, str]
    ordering_key: str | None
    published_at: float
    deliver_at: float | None
    deliveries: list[DeliveryStatus]


@dataclass(frozen=True, slots=True)
class TopicInfo:
    """A topic some message was published to or some subscription names literally."""

    name: str
    published: int  # messages published to it since it was first seen
    backlog: int  # messages not yet delivered to every subscription
    oldest_published_at: float | None  # of the backlog
    subscriptions: int  # subscriptions whose topic or pattern matches it


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a list; pass `next_cursor` back for the next, None at the end."""

    items: list[T]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    """One message on its way to one subscription, claimed under a lease.

    `lease` identifies this claim: acking, retrying or releasing with a lease that has
    since expired and been claimed again by someone else changes nothing.
    """

    delivery_id: int
    lease: str
    message_id: str
    subscription_id: int
    url: str
    body: str
    attempt: int
    published_at: float
    # The receiver's signing secrets valid now: the current one, and during a rotation
    # the previous one too. Empty for a receiver without a secret.
    secrets: tuple[str, ...] = ()
    topic: str = DEFAULT_TOPIC
    attributes: Mapping[str, str] = field(default_factory=dict)
    ordering_key: str | None = None
    retry: RetryOverrides = RetryOverrides()  # the subscription's own policy
    max_per_second: float | None = None  # the subscription's own pace
    max_concurrency: int | None = None  # the subscription's own cap on what it holds
    deliver_at: float | None = None  # a delayed message's time: its age counts from there
    format: DeliveryFormat = DeliveryFormat.MQ  # the subscription's layout of a delivery


@dataclass(frozen=True, slots=True)
class Claim:
    """What a claim returns: the deliveries now leased to the caller, and when the
    earliest remaining delivery (of a subscription with room) falls due, if any."""

    deliveries: list[ClaimedDelivery]
    next_due_at: float | None


@dataclass(frozen=True, slots=True)
class ClaimOffer:
    """A dispatcher's claim, made ahead for the store to run inside the next transaction
    that publishes deliveries due now (`Store.offer_claim`): `Store.claim`'s arguments,
    and the dispatcher's clock for its `now`."""

    limit: int
    lease_seconds: float
    per_subscription_limit: int
    busy: Mapping[int, int]
    clock: Callable[[], float]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A delivery that ran out of attempts or age, kept for inspection and redrive."""

    message_id: str
    receiver_id: int
    attempts: int
    last_error: str | None
    dead_at: float
    body: str
    topic: str = DEFAULT_TOPIC
    last_status: int | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A broker process sharing the store, as its last heartbeat described it."""

    name: str  # host:pid:tag, also in the leases it holds
    started_at: float
    seen_at: float  # its last heartbeat
    address: str = ""  # where it serves HTTP, as it reports it
    held: int = 0  # deliveries it has claimed and not yet settled
    in_flight: int = 0  # of those, being sent right now


@dataclass(frozen=True, slots=True)
class ReceiverHealth:
    """How a receiver's attempts went, as the nodes last saved it: what `mqpy status`
    shows of it after a restart. Its latest failure is described if it has one."""

    subscription_id: int
    last_success_at: float | None
    last_failure_at: float | None
    consecutive_failures: int
    unavailable: bool  # its latest failures were for want of the receiver (5xx, 429, none)
    last_error: str | None = None
    last_status: int | None = None
    last_message_id: str | None = None
    last_attempt: int | None = None

    @property
    def changed_at(self) -> float:
        """When its latest attempt ended: the newer of two saves wins."""
        return max(self.last_success_at or 0.0, self.last_failure_at or 0.0)


@dataclass(frozen=True, slots=True)
class BrokerStats:
    """The seed dashboard's four figures."""

    receivers: int
    senders: int
    queue_length: int
    completed: int


class Role(enum.StrEnum):
    """What an API key may do."""

    PUBLISHER = "publisher"  # connect as a sender, send
    SUBSCRIBER = "subscriber"  # connect as a receiver
    ADMIN = "admin"  # everything, dead letters and keys included


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key as stored: only a hash of its secret is kept."""

    id: str
    role: Role
    topics: tuple[str, ...]  # topic patterns it may use; empty means every topic
    secret_hash: str
    created_at: float


def int_cursor(cursor: str | None) -> int | None:
    """A cursor that is the last id of the previous page, or `BadCursor`."""
    if cursor is None:
        return None
    try:
        return int(cursor)
    except ValueError:
        raise BadCursor(f"the cursor {cursor!r} was not handed out by this list") from None


def name_cursor(cursor: str | None) -> str:
    """A cursor that is the last topic name of the previous page ("" before the first),
    or `BadCursor`."""
    if cursor is not None and not TOPIC_NAME.fullmatch(cursor):
        raise BadCursor(f"the cursor {cursor!r} was not handed out by this list")
    return cursor or ""
