"""The storage interface: a durable queue of deliveries with leases.

Every backend (SQLite now, PostgreSQL and NATS JetStream later) implements this class
and passes `tests/store/conformance.py` unchanged. Nothing in it assumes SQL: a claim
hands out deliveries under a lease that expires if the claimer dies, and the claimer
then acks, schedules a retry, dead-letters or releases each one.

Times are Unix seconds (floats) supplied by the caller, so tests control the clock.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mqpy.domain import (
    ApiKey,
    BrokerStats,
    Claim,
    Connection,
    DeadLetter,
    Delivery,
    Mode,
    NewMessage,
)


@dataclass(frozen=True, slots=True)
class TopicBacklog:
    """A topic's messages that a receiver still waits for, for operators' figures."""

    topic: str
    messages: int
    oldest_published_at: float


class Store(abc.ABC):
    """Durable state of one broker (or of several sharing one database)."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Create or migrate the schema and get ready for use."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish pending writes and release every resource."""

    # Connections. A receiving connection is also a push subscription on its topic.

    @abc.abstractmethod
    async def add_connection(
        self,
        mode: Mode,
        client_url: str,
        topic: str,
        now: float,
        *,
        key_id: str | None = None,
        secret: str | None = None,
    ) -> Connection:
        """Register a connection under a new random id that was never issued before.

        A receiver is subscribed to `topic` in the same transaction, and messages of
        that topic that were published while nobody was subscribed become its
        deliveries, due at once. `key_id` owns the connection; `secret` signs the
        receiver's deliveries.
        """

    @abc.abstractmethod
    async def rotate_secret(
        self, subscription_id: int, secret: str, *, now: float, overlap_seconds: float
    ) -> bool:
        """Sign with `secret` from now on; the old secret signs too until the overlap
        ends. False if no such subscription is active."""

    @abc.abstractmethod
    async def remove_connection(self, connection_id: int, now: float) -> Connection | None:
        """Disconnect; a receiver's pending deliveries and dead letters are dropped.

        Returns None if the id is not connected."""

    @abc.abstractmethod
    async def connections(self) -> list[Connection]:
        """Every connection that is currently connected."""

    # Messages and their deliveries.

    @abc.abstractmethod
    async def publish(self, message: NewMessage, *, max_backlog: int = 0) -> int:
        """Commit a message and one delivery per subscription of its topic, atomically.

        With no subscription the message waits for the first receiver of its topic.
        Returns the number of deliveries created. Concurrent calls may share one
        transaction (group commit); each returns only once its message is durable.
        With `max_backlog` > 0, raises `BacklogFull` instead when the store already
        holds that many messages that are not fully delivered (dead letters count).
        """

    @abc.abstractmethod
    async def claim(
        self,
        *,
        limit: int,
        now: float,
        lease_seconds: float,
        per_subscription_limit: int,
        busy: Mapping[int, int],
    ) -> Claim:
        """Lease up to `limit` due deliveries, oldest first.

        A subscription gets at most `per_subscription_limit - busy[id]` of them, so one
        slow receiver cannot fill the caller's buffer. Each claimed delivery's attempt
        count goes up by one; if the lease expires unacknowledged the delivery is due
        again and may be claimed by anyone.
        """

    @abc.abstractmethod
    async def ack(self, delivery: Delivery) -> None:
        """The receiver took it: the delivery is done."""

    @abc.abstractmethod
    async def retry(
        self, delivery: Delivery, *, due_at: float, error: str, status: int | None
    ) -> None:
        """The attempt failed: try again at `due_at`."""

    @abc.abstractmethod
    async def dead_letter(
        self, delivery: Delivery, *, now: float, error: str, status: int | None
    ) -> None:
        """The attempt failed and no retries are left: keep it as a dead letter."""

    @abc.abstractmethod
    async def release(self, deliveries: Sequence[Delivery], now: float) -> None:
        """Give claimed deliveries back unattempted (shutdown): due now, attempt undone."""

    # API keys.

    @abc.abstractmethod
    async def add_key(self, key: ApiKey) -> None:
        """Store a new API key (its id is unique)."""

    @abc.abstractmethod
    async def keys(self) -> list[ApiKey]:
        """Every key not revoked, oldest first."""

    @abc.abstractmethod
    async def revoke_key(self, key_id: str, now: float) -> bool:
        """Revoke a key for good; False if there is no such key still valid."""

    # Dead letters and figures.

    @abc.abstractmethod
    async def dead_letters(self, limit: int = 1000) -> list[DeadLetter]:
        """Dead letters, oldest first."""

    @abc.abstractmethod
    async def redrive(self, now: float, receiver_id: int | None = None) -> int:
        """Queue dead letters again from attempt 1 (all, or one receiver's).

        Returns how many were queued.
        """

    @abc.abstractmethod
    async def stats(self) -> BrokerStats:
        """Receivers, senders, undelivered work and completed deliveries."""

    # What operators watch: readiness, metrics and the status feed.

    @abc.abstractmethod
    async def ping(self) -> None:
        """Return once the store has served a trivial operation the way it serves
        publishes; raise `StoreUnavailable` if it cannot (for example once closed)."""

    @abc.abstractmethod
    async def topic_backlogs(self) -> list[TopicBacklog]:
        """Per topic with undelivered messages, sorted by topic: how many messages some
        receiver has yet to acknowledge (claimed ones included) or wait for a first
        receiver, and when the oldest of them was published. A message whose only
        unfinished deliveries are dead letters does not count."""

    @abc.abstractmethod
    async def dead_letter_count(self) -> int:
        """How many dead letters are kept."""
