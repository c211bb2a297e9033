"""The broker core: who may publish, what a receiver gets, what a disconnect means.

Plain async Python between the HTTP API and the store; no HTTP types in or out.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from mqpy.access import Principal
from mqpy.domain import (
    DEFAULT_TOPIC,
    BrokerError,
    BrokerStats,
    Connection,
    DeadLetter,
    Mode,
    NewMessage,
    NotASender,
    UnknownConnection,
)
from mqpy.ids import new_message_id
from mqpy.ratelimit import RateLimiter
from mqpy.signing import generate_secret
from mqpy.store import Store


class Forbidden(BrokerError):
    """The caller's key does not allow this."""


class RateLimited(BrokerError):
    """The caller's key is publishing faster than --publish-rate allows."""

    def __init__(self, retry_after: float, rate: float) -> None:
        super().__init__(
            f"this key may publish {rate:g} messages per second (--publish-rate); "
            f"retry in {retry_after:.1f} s"
        )
        self.retry_after = retry_after


class ReceiverRefused(BrokerError):
    """The receiver's URL may not be delivered to (an address the broker must not reach,
    or a receiver that did not confirm the subscription)."""


class DeliveryListener(Protocol):
    """What the broker tells the part that delivers (the dispatcher)."""

    def notify(self) -> None:
        """New deliveries may be due now."""

    def forget_subscription(self, subscription_id: int) -> None:
        """A receiver is gone: drop what is claimed for it and not yet sent."""


class ReceiverGate(Protocol):
    """Checks a receiver before it is activated (address policy, confirmation)."""

    async def refusal(self, url: str) -> str | None:
        """Why deliveries to `url` must not be made, or None."""


class PublishObserver(Protocol):
    """Told of each message the broker accepted (metrics, throughput)."""

    def published(self, topic: str) -> None:
        """A message of `topic` was committed."""


class _NoListener:
    def notify(self) -> None:
        pass

    def forget_subscription(self, subscription_id: int) -> None:
        pass


class _OpenGate:
    async def refusal(self, url: str) -> str | None:
        return None


class _NoObserver:
    def published(self, topic: str) -> None:
        pass


@dataclass(frozen=True, slots=True)
class Limits:
    """The broker's own limits (0 means none)."""

    max_backlog: int = 0
    max_connections_per_key: int = 0
    publish_rate: float = 0.0
    publish_burst: float = 0.0
    secret_overlap: float = 86400.0


class Broker:
    """The seed protocol's operations on top of a store.

    Connections are cached in memory: `/send` checks its sender on every call, and this
    process is the only one that adds or removes connections of its store.
    """

    def __init__(
        self,
        store: Store,
        limits: Limits = Limits(),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._limits = limits
        self._listener: DeliveryListener = _NoListener()
        self._observer: PublishObserver = _NoObserver()
        self._gate: ReceiverGate = _OpenGate()
        self._clock = clock
        self._connections: dict[int, Connection] = {}
        self._per_key: Counter[str | None] = Counter()
        self._publish_rate = RateLimiter(limits.publish_rate, limits.publish_burst, clock)

    async def start(self) -> None:
        self._connections = {c.id: c for c in await self._store.connections()}
        self._per_key = Counter(c.key_id for c in self._connections.values())

    def set_delivery_listener(self, listener: DeliveryListener) -> None:
        self._listener = listener

    def set_publish_observer(self, observer: PublishObserver) -> None:
        self._observer = observer

    def set_receiver_gate(self, gate: ReceiverGate) -> None:
        self._gate = gate

    async def connect(
        self, mode: Mode, client_url: str, principal: Principal, topic: str = DEFAULT_TOPIC
    ) -> tuple[Connection, str | None]:
        """Register a client; a receiver also gets its signing secret (returned once)."""
        self._check_may_connect(mode, topic, principal)
        secret = None
        if mode is Mode.RECEIVE:
            refusal = await self._gate.refusal(client_url)
            if refusal is not None:
                raise ReceiverRefused(refusal)
            secret = generate_secret()
        connection = await self._store.add_connection(
            mode, client_url, topic, self._clock(), key_id=principal.key_id, secret=secret
        )
        self._connections[connection.id] = connection
        self._per_key[principal.key_id] += 1
        if mode is Mode.RECEIVE:
            self._listener.notify()
        return connection, secret

    def _check_may_connect(self, mode: Mode, topic: str, principal: Principal) -> None:
        wanted = "publisher" if mode is Mode.SEND else "subscriber"
        if not principal.is_admin and principal.role.value != wanted:
            raise Forbidden(f"connecting with mode '{mode.value}' needs a {wanted} or admin key")
        if not principal.may_use_topic(topic):
            raise Forbidden(f"this key may not use the topic {topic!r}")
        limit = self._limits.max_connections_per_key
        if limit and self._per_key[principal.key_id] >= limit:
            raise Forbidden(
                f"this key already holds {limit} connections (--max-connections-per-key); "
                "disconnect some first"
            )

    async def disconnect(self, connection_id: int, principal: Principal) -> Connection:
        self._owned(connection_id, principal)
        connection = await self._remove(connection_id)
        if connection is None:
            raise UnknownConnection(connection_id)
        return connection

    async def disconnect_key(self, key_id: str) -> int:
        """Disconnect every connection a (revoked) key made; returns how many."""
        owned = [c.id for c in self._connections.values() if c.key_id == key_id]
        for connection_id in owned:
            await self._remove(connection_id)
        return len(owned)

    async def _remove(self, connection_id: int) -> Connection | None:
        connection = await self._store.remove_connection(connection_id, self._clock())
        self._connections.pop(connection_id, None)
        if connection is not None:
            self._per_key[connection.key_id] -= 1
            if connection.mode is Mode.RECEIVE:
                self._listener.forget_subscription(connection_id)
        return connection

    async def send(self, sender_id: int, body: str, principal: Principal) -> str:
        """Publish `body` from a connected sender; returns the message id."""
        sender = self._owned(sender_id, principal)
        if sender.mode is not Mode.SEND:
            raise NotASender(
                f"connection {sender_id} is a receiver; connect with mode 'send' to publish"
            )
        wait = self._publish_rate.acquire(principal.key_id)
        if wait > 0:
            raise RateLimited(wait, self._limits.publish_rate)
        message = NewMessage(
            id=new_message_id(),
            topic=sender.topic,
            body=body,
            published_at=self._clock(),
            publisher_id=sender_id,
        )
        if await self._store.publish(message, max_backlog=self._limits.max_backlog):
            self._listener.notify()
        self._observer.published(message.topic)
        return message.id

    async def rotate_secret(self, receiver_id: int, principal: Principal) -> str:
        """A new signing secret for a receiver; the old one keeps signing for the
        overlap window so the receiver can switch without losing a delivery."""
        connection = self._owned(receiver_id, principal)
        if connection.mode is not Mode.RECEIVE:
            raise UnknownConnection(receiver_id)
        secret = generate_secret()
        await self._store.rotate_secret(
            receiver_id, secret, now=self._clock(), overlap_seconds=self._limits.secret_overlap
        )
        return secret

    def _owned(self, connection_id: int, principal: Principal) -> Connection:
        connection = self._connections.get(connection_id)
        if connection is None:
            raise UnknownConnection(connection_id)
        if not principal.is_admin and connection.key_id != principal.key_id:
            raise Forbidden(f"connection {connection_id} belongs to another key")
        return connection

    async def dead_letters(self, principal: Principal) -> list[DeadLetter]:
        require_admin(principal)
        return await self._store.dead_letters()

    async def redrive(self, principal: Principal, receiver_id: int | None = None) -> int:
        require_admin(principal)
        count = await self._store.redrive(self._clock(), receiver_id)
        if count:
            self._listener.notify()
        return count

    def receivers(self) -> list[Connection]:
        """The receivers connected now (from memory: no store read)."""
        return [c for c in self._connections.values() if c.mode is Mode.RECEIVE]

    def connection(self, connection_id: int) -> Connection | None:
        return self._connections.get(connection_id)

    async def stats(self) -> BrokerStats:
        return await self._store.stats()


def require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise Forbidden("this needs an admin key")
