"""The broker's vocabulary: plain values passed between the API, the core and the store.

Nothing here knows about HTTP or SQL.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

DEFAULT_TOPIC = "default"


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


@dataclass(frozen=True, slots=True)
class Delivery:
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


@dataclass(frozen=True, slots=True)
class Claim:
    """What a claim returns: the deliveries now leased to the caller, and when the
    earliest remaining delivery (of a subscription with room) falls due, if any."""

    deliveries: list[Delivery]
    next_due_at: float | None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A delivery that ran out of attempts or age, kept for inspection and redrive."""

    message_id: str
    receiver_id: int
    attempts: int
    last_error: str | None
    dead_at: float
    body: str


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


class BrokerError(Exception):
    """A request the broker refuses; the API turns each kind into its HTTP status."""


class UnknownConnection(BrokerError):
    """No connected client has this id (never issued, or disconnected)."""

    def __init__(self, connection_id: int) -> None:
        super().__init__(f"no client is connected with id {connection_id}")
        self.connection_id = connection_id


class NotASender(BrokerError):
    """The id belongs to a receiver, which may not publish."""


class BacklogFull(BrokerError):
    """The store holds as many undelivered messages as it may; try again later."""


class StoreUnavailable(BrokerError):
    """The store could not commit (disk full, I/O error); nothing was accepted."""
