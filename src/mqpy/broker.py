"""The broker core: who may publish, what a receiver gets, what a disconnect means.

Plain async Python between the HTTP API and the store; no HTTP types in or out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from mqpy.domain import (
    DEFAULT_TOPIC,
    BrokerStats,
    Connection,
    DeadLetter,
    Mode,
    NewMessage,
    NotASender,
    UnknownConnection,
)
from mqpy.ids import new_message_id
from mqpy.store import Store


class DeliveryListener(Protocol):
    """What the broker tells the part that delivers (the dispatcher)."""

    def notify(self) -> None:
        """New deliveries may be due now."""

    def forget_subscription(self, subscription_id: int) -> None:
        """A receiver is gone: drop what is claimed for it and not yet sent."""


class _NoListener:
    def notify(self) -> None:
        pass

    def forget_subscription(self, subscription_id: int) -> None:
        pass


class Broker:
    """The seed protocol's operations on top of a store.

    Connections are cached in memory: `/send` checks its sender on every call, and this
    process is the only one that adds or removes connections of its store.
    """

    def __init__(
        self,
        store: Store,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._listener: DeliveryListener = _NoListener()
        self._clock = clock
        self._connections: dict[int, Connection] = {}

    async def start(self) -> None:
        self._connections = {c.id: c for c in await self._store.connections()}

    def set_delivery_listener(self, listener: DeliveryListener) -> None:
        self._listener = listener

    async def connect(self, mode: Mode, client_url: str, topic: str = DEFAULT_TOPIC) -> Connection:
        connection = await self._store.add_connection(mode, client_url, topic, self._clock())
        self._connections[connection.id] = connection
        if mode is Mode.RECEIVE:
            self._listener.notify()
        return connection

    async def disconnect(self, connection_id: int) -> Connection:
        connection = await self._store.remove_connection(connection_id, self._clock())
        self._connections.pop(connection_id, None)
        if connection is None:
            raise UnknownConnection(connection_id)
        if connection.mode is Mode.RECEIVE:
            self._listener.forget_subscription(connection_id)
        return connection

    async def send(self, sender_id: int, body: str) -> str:
        """Publish `body` from a connected sender; returns the message id."""
        sender = self._connections.get(sender_id)
        if sender is None:
            raise UnknownConnection(sender_id)
        if sender.mode is not Mode.SEND:
            raise NotASender(
                f"connection {sender_id} is a receiver; connect with mode 'send' to publish"
            )
        message = NewMessage(
            id=new_message_id(),
            topic=sender.topic,
            body=body,
            published_at=self._clock(),
            publisher_id=sender_id,
        )
        if await self._store.publish(message):
            self._listener.notify()
        return message.id

    async def dead_letters(self) -> list[DeadLetter]:
        return await self._store.dead_letters()

    async def redrive(self, receiver_id: int | None = None) -> int:
        count = await self._store.redrive(self._clock(), receiver_id)
        if count:
            self._listener.notify()
        return count

    async def stats(self) -> BrokerStats:
        return await self._store.stats()
