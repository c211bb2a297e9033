"""The broker core: who may publish, what a receiver gets, what a disconnect means.

Plain async Python between the HTTP API and the store; no HTTP types in or out.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from mqpy.auth.access import Principal
from mqpy.core.group_state import GroupState
from mqpy.core.ratelimit import publish_limiter
from mqpy.model.domain import (
    DEFAULT_TOPIC,
    BrokerStats,
    Connection,
    DeadLetter,
    Filter,
    Mode,
    NewMessage,
    Page,
    Publication,
    Published,
    Role,
    SeekResult,
    StartAt,
    StoredMessage,
    Subscription,
    SubscriptionChanges,
    SubscriptionSpec,
    TopicInfo,
    int_cursor,
)
from mqpy.model.errors import (
    Conflict,
    Forbidden,
    NotASender,
    NotPullable,
    RateLimited,
    ReceiverRefused,
    UnknownConnection,
    UnknownDeadLetter,
    UnknownMessage,
    UnknownSubscription,
    UnknownTopic,
)
from mqpy.model.ids import new_message_ids
from mqpy.model.topics import is_reserved
from mqpy.model.topics import matches as topics_match
from mqpy.store import Store
from mqpy.wire.signing import generate_secret


class DeliveryListener(Protocol):
    """What the broker tells the part that delivers (the dispatcher)."""

    def notify(self) -> None:
        """New deliveries may be due now."""

    def forget_subscription(self, subscription_id: int) -> None:
        """A receiver is gone: drop what is claimed for it and not yet sent."""

    def subscription_changed(self, subscription: Subscription) -> None:
        """A subscription was made or its settings changed (pace, cap, pause)."""


class DeliveryListeners:
    """Several listeners told the same (the dispatcher, and pull consumers waiting)."""

    def __init__(self, *listeners: DeliveryListener) -> None:
        self._listeners = listeners

    def notify(self) -> None:
        for listener in self._listeners:
            listener.notify()

    def forget_subscription(self, subscription_id: int) -> None:
        for listener in self._listeners:
            listener.forget_subscription(subscription_id)

    def subscription_changed(self, subscription: Subscription) -> None:
        for listener in self._listeners:
            listener.subscription_changed(subscription)


class ReceiverGate(Protocol):
    """Checks a receiver before it is activated (address policy, confirmation)."""

    async def refusal(self, url: str) -> str | None:
        """Why deliveries to `url` must not be made, or None."""


class PublishObserver(Protocol):
    """Told of the messages the broker accepted (metrics, throughput)."""

    def published(self, topic: str, count: int = 1) -> None:
        """`count` messages of `topic` were committed (a batch is told at once)."""


class _NoListener:
    def notify(self) -> None:
        pass

    def forget_subscription(self, subscription_id: int) -> None:
        pass

    def subscription_changed(self, subscription: Subscription) -> None:
        pass


class _OpenGate:
    async def refusal(self, url: str) -> str | None:
        return None


class _NoObserver:
    def published(self, topic: str, count: int = 1) -> None:
        pass


@dataclass(frozen=True, slots=True)
class Limits:
    """The broker's own limits (0 means none)."""

    max_backlog: int = 0
    max_connections_per_key: int = 0
    publish_rate: float = 0.0
    publish_burst: float = 0.0
    secret_overlap: float = 86400.0
    dedup_window: float = 86400.0  # how long an idempotency key is remembered
    # The processes of a `--processes` group, which share publish_rate and
    # publish_burst (a key whose bucket finds the group's table full gets a share).
    processes: int = 1


class Broker:
    """The broker's operations (the seed protocol's and the native API's) on a store.

    Connections and subscriptions are cached in memory, since `/send` checks its sender
    on every call. The store is the truth: other nodes sharing it change them too, so
    `reload` (called by `peers.CatalogSync` when the store's catalog version moves)
    brings the cache back in line, and a sender missing from it is looked up.
    """

    def __init__(
        self,
        store: Store,
        limits: Limits = Limits(),
        clock: Callable[[], float] = time.time,
        *,
        gate: ReceiverGate | None = None,
        group: GroupState | None = None,
    ) -> None:
        """`group`: the state a `--processes` group shares, where its publish rate is
        kept."""
        self._store = store
        self._limits = limits
        # Told nothing until `start` names who listens: nothing is published before.
        self._listener: DeliveryListener = _NoListener()
        self._observer: PublishObserver = _NoObserver()
        self._gate: ReceiverGate = gate if gate is not None else _OpenGate()
        self._clock = clock
        self._connections: dict[int, Connection] = {}
        self._subscriptions: dict[int, Subscription] = {}
        # Connections per key, of those in `_connections`, always.
        self._per_key: Counter[str | None] = Counter()
        # While `reload` reads the store: the ids this process changed in the cache
        # meanwhile, whose cached state may be newer than what the reload read.
        self._touched: set[int] | None = None
        self._publish_rate = publish_limiter(
            limits.publish_rate, limits.publish_burst, clock, group, limits.processes
        )

    async def start(
        self,
        listener: DeliveryListener | None = None,
        observer: PublishObserver | None = None,
    ) -> None:
        """Load the cache and tell `listener` of every subscription in it; from now on
        it hears of each change, and `observer` of each accepted message."""
        if listener is not None:
            self._listener = listener
        if observer is not None:
            self._observer = observer
        await self.reload()

    async def reload(self) -> bool:
        """Read connections and subscriptions from the store again, and tell the
        dispatcher what changed. Ids this process changed while the store was read keep
        their cached state; False if there were any (a later reload settles them)."""
        self._touched = set()
        try:
            connections = await self._store.connections()
            subscriptions = await self._all_subscriptions()
            touched = self._touched
        finally:
            self._touched = None
        self._replace_connections({c.id: c for c in connections}, touched)
        self._replace_subscriptions({s.id: s for s in subscriptions}, touched)
        return not touched

    async def _all_subscriptions(self, topic: str | None = None) -> list[Subscription]:
        found: list[Subscription] = []
        cursor: str | None = None
        while True:
            page = await self._store.subscriptions(topic=topic, cursor=cursor, limit=1000)
            found.extend(page.items)
            cursor = page.next_cursor
            if cursor is None:
                return found

    def _replace_connections(self, stored: dict[int, Connection], touched: set[int]) -> None:
        fresh = {i: c for i, c in stored.items() if i not in touched}
        fresh.update((i, self._connections[i]) for i in touched if i in self._connections)
        self._connections = fresh
        self._per_key = Counter(c.key_id for c in fresh.values())

    def _replace_subscriptions(self, stored: dict[int, Subscription], touched: set[int]) -> None:
        old = self._subscriptions
        fresh = {i: s for i, s in stored.items() if i not in touched}
        fresh.update((i, old[i]) for i in touched if i in old)
        self._subscriptions = fresh
        changed = [s for i, s in fresh.items() if old.get(i) != s]
        gone = [i for i in old if i not in fresh]
        for subscription in changed:
            self._listener.subscription_changed(subscription)
        for subscription_id in gone:
            self._listener.forget_subscription(subscription_id)
        if changed or gone:
            self._listener.notify()

    # The cache, changed by this process: each change is noted for a reload under way.

    def _put_connection(self, connection: Connection) -> None:
        if connection.id not in self._connections:
            self._per_key[connection.key_id] += 1
        self._connections[connection.id] = connection
        self._touch(connection.id)

    def _drop_connection(self, connection_id: int) -> None:
        connection = self._connections.pop(connection_id, None)
        if connection is not None:
            self._per_key[connection.key_id] -= 1
            if self._per_key[connection.key_id] <= 0:
                del self._per_key[connection.key_id]
        self._touch(connection_id)

    def _put_subscription(self, subscription: Subscription) -> None:
        self._subscriptions[subscription.id] = subscription
        self._touch(subscription.id)
        self._listener.subscription_changed(subscription)

    def _touch(self, item_id: int) -> None:
        if self._touched is not None:
            self._touched.add(item_id)

    # The seed protocol.

    async def connect(
        self,
        mode: Mode,
        client_url: str,
        principal: Principal,
        topic: str = DEFAULT_TOPIC,
        *,
        group: str | None = None,
        filter: Filter | None = None,
        start_at: StartAt = None,
    ) -> tuple[Connection, str | None]:
        """Register a client; a receiver also gets its signing secret (returned once).
        A receiver starts as any subscription does: with what is published from now on,
        unless `start_at` replays retained messages too."""
        self._check_may_connect(mode, topic, principal)
        secret = None
        if mode is Mode.RECEIVE:
            await self._check_receiver(client_url)
            secret = generate_secret()
        connection = await self._store.add_connection(
            mode,
            client_url,
            topic,
            self._clock(),
            key_id=principal.key_id,
            secret=secret,
            group=group if mode is Mode.RECEIVE else None,
            filter=filter if mode is Mode.RECEIVE else None,
            start_at=start_at if mode is Mode.RECEIVE else None,
        )
        self._put_connection(connection)
        if mode is Mode.RECEIVE:
            await self._cache_subscription(connection.id)
            self._listener.notify()
        return connection, secret

    async def _check_receiver(self, url: str) -> None:
        refusal = await self._gate.refusal(url)
        if refusal is not None:
            raise ReceiverRefused(refusal)

    async def _cache_subscription(self, subscription_id: int) -> None:
        subscription = await self._store.subscription(subscription_id)
        if subscription is not None:
            self._put_subscription(subscription)

    def _check_may_connect(self, mode: Mode, topic: str, principal: Principal) -> None:
        wanted = "publisher" if mode is Mode.SEND else "subscriber"
        if not principal.is_admin and principal.role.value != wanted:
            raise Forbidden(f"connecting with mode '{mode.value}' needs a {wanted} or admin key")
        if mode is Mode.SEND:
            self._check_publishable(topic)
        self._check_topic(topic, principal)
        limit = self._limits.max_connections_per_key
        if limit and self._per_key[principal.key_id] >= limit:
            raise Forbidden(
                f"this key already holds {limit} connections (--max-connections-per-key); "
                "disconnect some first"
            )

    def _check_topic(self, topic: str, principal: Principal) -> None:
        if not principal.may_use_topic(topic):
            if is_reserved(topic):
                raise Forbidden(
                    f"{topic!r} is one of the broker's own topics (mq.events tells of every "
                    "subscription): it needs an admin key, or a key created with --topic "
                    "mq.events"
                )
            raise Forbidden(f"this key may not use the topic {topic!r}")

    def _check_publishable(self, topic: str) -> None:
        if is_reserved(topic):
            raise Forbidden(
                f"{topic!r} is one of the broker's own topics: only the broker publishes "
                "under mq. (its events, on mq.events); publish to a topic of your own"
            )

    async def disconnect(self, connection_id: int, principal: Principal) -> Connection:
        await self._owned(connection_id, principal)
        connection = await self._remove(connection_id)
        if connection is None:
            raise UnknownConnection(connection_id)
        return connection

    async def disconnect_key(self, key_id: str) -> int:
        """Disconnect every connection and end every subscription a (revoked) key
        made; returns how many connections. Read from the store, not the cache: some
        may have been made through another node a moment ago."""
        owned = [c.id for c in await self._store.connections() if c.key_id == key_id]
        for connection_id in owned:
            await self._remove(connection_id)
        for subscription in await self._all_subscriptions():
            if subscription.key_id == key_id and subscription.connection_id is None:
                with contextlib.suppress(UnknownSubscription):  # another node ended it
                    await self._end_subscription(subscription.id)
        return len(owned)

    async def _remove(self, connection_id: int) -> Connection | None:
        cached = self._connections.get(connection_id)
        connection = await self._store.remove_connection(connection_id, self._clock())
        self._drop_connection(connection_id)
        # Gone either way: removed now, or already through another node.
        removed = connection or cached
        if removed is not None and removed.mode is Mode.RECEIVE:
            self._forget(connection_id)
        return connection

    def _forget(self, subscription_id: int) -> None:
        self._subscriptions.pop(subscription_id, None)
        self._touch(subscription_id)
        self._listener.forget_subscription(subscription_id)
        # A group member's deliveries stay for the others, due now.
        self._listener.notify()

    async def send(
        self,
        sender_id: int,
        publication: Publication | str,
        principal: Principal,
        topic: str | None = None,
    ) -> Published:
        """Publish from a connected sender, to its topic unless `topic` is given."""
        sender = await self._owned(sender_id, principal)
        if sender.mode is not Mode.SEND:
            raise NotASender(
                f"connection {sender_id} is a receiver; connect with mode 'send' to publish"
            )
        if isinstance(publication, str):
            publication = Publication(publication)
        (published,) = await self._publish(
            topic or sender.topic, [publication], principal, publisher_id=sender_id
        )
        return published

    # Publishing.

    async def publish(
        self, topic: str, publications: list[Publication], principal: Principal
    ) -> list[Published]:
        """Publish messages to `topic` in one transaction (all or none)."""
        if not principal.is_admin and principal.role is not Role.PUBLISHER:
            raise Forbidden("publishing needs a publisher or admin key")
        return await self._publish(topic, publications, principal, publisher_id=None)

    async def _publish(
        self,
        topic: str,
        publications: list[Publication],
        principal: Principal,
        publisher_id: int | None,
    ) -> list[Published]:
        self._check_publishable(topic)
        self._check_topic(topic, principal)
        wait = self._publish_rate.acquire(principal.key_id, len(publications))
        if wait > 0:
            raise RateLimited(wait, self._limits.publish_rate)
        now = self._clock()
        ids = new_message_ids(len(publications))
        messages = [
            NewMessage(
                id=message_id,
                topic=topic,
                body=p.body,
                published_at=now,
                publisher_id=publisher_id,
                attributes=p.attributes,
                ordering_key=p.ordering_key,
                deliver_at=_deliver_at(p, now),
                idempotency_key=p.idempotency_key,
                publisher_key=principal.key_id,
            )
            for message_id, p in zip(ids, publications, strict=True)
        ]
        published = await self._store.publish(
            messages,
            max_backlog=self._limits.max_backlog,
            dedup_since=now - self._limits.dedup_window,
        )
        # Unless a claim in the publish's own transaction took them all already.
        if any(p.deliveries and not p.claimed for p in published):
            self._listener.notify()
        stored = sum(not result.duplicate for result in published)
        if stored:
            self._observer.published(topic, stored)
        return published

    async def message(self, message_id: str, principal: Principal) -> StoredMessage:
        """A kept message and where each of its deliveries stands."""
        message = await self._store.message(message_id, self._clock())
        if message is None or not principal.may_use_topic(message.topic):
            raise UnknownMessage(message_id)
        return message

    # Push subscriptions.

    async def create_subscription(
        self,
        spec: SubscriptionSpec,
        principal: Principal,
        *,
        secret: str | None = None,
        paused: bool = False,
        start_at: StartAt = None,
    ) -> tuple[Subscription, str]:
        """A new push subscription and its signing secret (the caller's, else a new
        one, returned once); `paused`: nothing is delivered to it until resumed;
        `start_at`: retained messages from then on are its deliveries too."""
        if not principal.is_admin and principal.role is not Role.SUBSCRIBER:
            raise Forbidden("creating a subscription needs a subscriber or admin key")
        self._check_topic(spec.topic, principal)
        if not spec.is_pull:
            await self._check_receiver(spec.url)
        secret = secret or generate_secret()
        subscription = await self._store.add_subscription(
            spec,
            self._clock(),
            key_id=principal.key_id,
            secret=secret,
            paused=paused,
            start_at=start_at,
        )
        self._put_subscription(subscription)
        self._listener.notify()
        return subscription, secret

    async def subscriptions(
        self,
        principal: Principal,
        *,
        topic: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page[Subscription]:
        """Subscriptions the caller may see: all for an admin, else its own."""
        if principal.is_admin:
            return await self._store.subscriptions(topic=topic, cursor=cursor, limit=limit)
        # Few subscriptions belong to one key; filter a full walk of the store's list.
        # Not this process's cached catalogue: in a group, a subscription made through
        # another process reaches that cache up to a second later, and its maker would
        # not find it in its own list meanwhile (the admin's list reads the store too).
        mine = [s for s in await self._all_subscriptions(topic) if s.key_id == principal.key_id]
        after = int_cursor(cursor)
        mine = [s for s in mine if after is None or s.id > after]
        page = mine[:limit]
        more = len(mine) > limit
        return Page(page, str(page[-1].id) if more and page else None)

    async def subscription(self, subscription_id: int, principal: Principal) -> Subscription:
        subscription = await self._store.subscription(subscription_id)
        if subscription is None or not _may_manage(subscription, principal):
            raise UnknownSubscription(subscription_id)
        return subscription

    async def pullable(self, subscription_id: int, principal: Principal) -> Subscription:
        """A pull subscription the caller may pull from and acknowledge: its own (or
        any, for an admin). `NotPullable` for a push subscription."""
        subscription = await self.subscription(subscription_id, principal)
        if not subscription.spec.is_pull:
            raise NotPullable(subscription_id)
        return subscription

    async def update_subscription(
        self, subscription_id: int, changes: SubscriptionChanges, principal: Principal
    ) -> Subscription:
        current = await self.subscription(subscription_id, principal)
        if current.spec.is_pull:
            _check_pull_changes(subscription_id, changes)
        if changes.url is not None:
            await self._check_receiver(changes.url)
        updated = await self._store.update_subscription(subscription_id, changes)
        return self._changed(subscription_id, updated)

    async def set_paused(
        self, subscription_id: int, paused: bool, principal: Principal
    ) -> Subscription:
        """Pause, or resume: a paused or a disabled subscription (events.py)."""
        await self.subscription(subscription_id, principal)
        if paused:
            updated = await self._store.set_paused(subscription_id, True)
        else:
            updated = await self._store.resume(subscription_id, self._clock())
        return self._changed(subscription_id, updated)

    async def seek(self, subscription_id: int, time: float, principal: Principal) -> SeekResult:
        """Move a subscription (a group member: its group) to `time`: the retained
        messages published from then on are due again, the pending ones before it are
        acknowledged. A time after now acknowledges everything pending."""
        await self.subscription(subscription_id, principal)
        result = await self._store.seek(subscription_id, time, self._clock())
        if result is None:
            raise UnknownSubscription(subscription_id)
        if result.due:
            self._listener.notify()
        return result

    async def disable(
        self, subscription: Subscription, *, reason: str, now: float
    ) -> Subscription | None:
        """Disable a subscription still failing since its `failing_since`
        (delivery/endpoint_health.py); None if it was not (any more)."""
        assert subscription.failing_since is not None
        disabled = await self._store.disable_subscription(
            subscription.id, failing_since=subscription.failing_since, now=now, reason=reason
        )
        if disabled is not None:
            self._put_subscription(disabled)
        return disabled

    def _changed(self, subscription_id: int, updated: Subscription | None) -> Subscription:
        if updated is None:
            raise UnknownSubscription(subscription_id)
        self._put_subscription(updated)
        self._listener.notify()
        return updated

    async def delete_subscription(self, subscription_id: int, principal: Principal) -> None:
        subscription = await self.subscription(subscription_id, principal)
        if subscription.connection_id is not None and (
            await self._known_connection(subscription.connection_id) is not None
        ):
            await self._remove(subscription.connection_id)
            return
        await self._end_subscription(subscription_id)

    async def _end_subscription(self, subscription_id: int) -> None:
        if await self._store.remove_subscription(subscription_id, self._clock()) is None:
            raise UnknownSubscription(subscription_id)
        self._forget(subscription_id)

    def receivers(self) -> list[Subscription]:
        """Every active push subscription, seed receivers included (from memory)."""
        return list(self._subscriptions.values())

    async def rotate_secret(self, receiver_id: int, principal: Principal) -> str:
        """A new signing secret for a receiver; the old one keeps signing for the
        overlap window so the receiver can switch without losing a delivery."""
        connection = await self._known_connection(receiver_id)
        if connection is not None:
            _check_owner(connection, principal)
            if connection.mode is not Mode.RECEIVE:
                raise UnknownConnection(receiver_id)
        else:
            subscription = await self._store.subscription(receiver_id)
            if subscription is None or not _may_manage(subscription, principal):
                raise UnknownConnection(receiver_id)
        secret = generate_secret()
        await self._store.rotate_secret(
            receiver_id, secret, now=self._clock(), overlap_seconds=self._limits.secret_overlap
        )
        return secret

    async def _owned(self, connection_id: int, principal: Principal) -> Connection:
        connection = await self._known_connection(connection_id)
        if connection is None:
            raise UnknownConnection(connection_id)
        _check_owner(connection, principal)
        return connection

    async def _known_connection(self, connection_id: int) -> Connection | None:
        """A connection from the cache, else from the store: it may have been made
        through another node since the last reload."""
        connection = self._connections.get(connection_id)
        if connection is None:
            connection = await self._store.connection(connection_id)
            if connection is not None:
                self._put_connection(connection)
        return connection

    # Dead letters.

    async def dead_letters(
        self,
        principal: Principal,
        *,
        subscription_id: int | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page[DeadLetter]:
        await self._check_dead_letter_rights(principal, subscription_id)
        return await self._store.dead_letters(
            subscription_id=subscription_id, cursor=cursor, limit=limit
        )

    async def redrive(self, principal: Principal, receiver_id: int | None = None) -> int:
        await self._check_dead_letter_rights(principal, receiver_id)
        count = await self._store.redrive(self._clock(), receiver_id)
        if count:
            self._listener.notify()
        return count

    async def purge_dead_letters(
        self, principal: Principal, subscription_id: int | None = None
    ) -> int:
        await self._check_dead_letter_rights(principal, subscription_id)
        return await self._store.purge_dead_letters(subscription_id, now=self._clock())

    async def redrive_dead_letter(
        self, principal: Principal, subscription_id: int, message_id: str
    ) -> None:
        """Queue one subscription's dead letter of one message again, from attempt 1."""
        await self._check_dead_letter_rights(principal, subscription_id)
        if not await self._store.redrive(self._clock(), subscription_id, message_id=message_id):
            raise UnknownDeadLetter(subscription_id, message_id)
        self._listener.notify()

    async def drop_dead_letter(
        self, principal: Principal, subscription_id: int, message_id: str
    ) -> None:
        """Drop one subscription's dead letter of one message for good."""
        await self._check_dead_letter_rights(principal, subscription_id)
        dropped = await self._store.purge_dead_letters(
            subscription_id, now=self._clock(), message_id=message_id
        )
        if not dropped:
            raise UnknownDeadLetter(subscription_id, message_id)

    async def _check_dead_letter_rights(
        self, principal: Principal, subscription_id: int | None
    ) -> None:
        """Every dead letter needs an admin; one subscription's, its owner will do. A
        subscription that does not exist is UnknownSubscription even to an admin: a
        mistyped id answered `redriven: 0` looked like success."""
        if subscription_id is None:
            require_admin(principal)
        else:
            await self.subscription(subscription_id, principal)

    # Topics and figures.

    async def topics(
        self, principal: Principal, *, cursor: str | None = None, limit: int = 100
    ) -> Page[TopicInfo]:
        require_admin(principal)
        return await self._store.topics(cursor=cursor, limit=limit)

    async def topic(self, name: str, principal: Principal) -> tuple[TopicInfo, list[Subscription]]:
        """A topic's figures and the subscriptions that match it."""
        require_admin(principal)
        info = await self._store.topic(name)
        if info is None:
            raise UnknownTopic(name)
        matching = sorted(
            (s for s in self._subscriptions.values() if topics_match(s.spec.topic, name)),
            key=lambda s: s.id,
        )
        return info, matching

    async def stats(self) -> BrokerStats:
        return await self._store.stats()


def _deliver_at(publication: Publication, now: float) -> float | None:
    if publication.deliver_at is not None:
        return publication.deliver_at if publication.deliver_at > now else None
    if publication.delay_seconds:
        return now + publication.delay_seconds
    return None


def _check_pull_changes(subscription_id: int, changes: SubscriptionChanges) -> None:
    """A pull subscription has no url, no pace or cap (its consumers take what they
    ask for), and no delivery format (its messages are answers to pulls)."""
    pushing = {
        "url": changes.url is not None,
        "max_concurrency": changes.max_concurrency is not None,
        "max_per_second": changes.max_per_second is not None,
        "format": changes.format is not None,
        "disable_after_seconds": changes.disable_after_seconds is not None,
    }
    for name, given in pushing.items():
        if given:
            raise Conflict(
                f"subscription {subscription_id} is a pull subscription, which has no "
                f"{name}: that is a push subscription's; create one to have messages POSTed"
            )


def _check_owner(connection: Connection, principal: Principal) -> None:
    if not principal.is_admin and connection.key_id != principal.key_id:
        raise Forbidden(f"connection {connection.id} belongs to another key")


def _may_manage(subscription: Subscription, principal: Principal) -> bool:
    return principal.is_admin or subscription.key_id == principal.key_id


def require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise Forbidden("this needs an admin key")
