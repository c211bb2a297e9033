"""The storage interface: a durable queue of deliveries with leases.

Every backend (SQLite now, PostgreSQL and NATS JetStream later) implements this class
and passes `tests/store/conformance.py` unchanged. Nothing in it assumes SQL: a claim
hands out deliveries under a lease that expires if the claimer dies, and the claimer
then acks, schedules a retry, dead-letters or releases each one.

Times are Unix seconds (floats) supplied by the caller, so tests control the clock;
the broker reads them from `Store.clock`, which on a shared database follows the
database's clock, so nodes on hosts whose clocks disagree still agree on leases.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from mqpy.model.domain import (
    ApiKey,
    BrokerStats,
    Claim,
    ClaimedDelivery,
    ClaimOffer,
    Connection,
    DeadLetter,
    Filter,
    Mode,
    NewMessage,
    NodeInfo,
    Page,
    Published,
    ReceiverHealth,
    SeekResult,
    StartAt,
    StoredMessage,
    Subscription,
    SubscriptionChanges,
    SubscriptionSpec,
    TopicInfo,
)
from mqpy.store.batching import Settlement


@dataclass(frozen=True, slots=True)
class TopicBacklog:
    """A topic's messages that a receiver still waits for, for operators' figures."""

    topic: str
    messages: int
    oldest_published_at: float


class Store(abc.ABC):
    """Durable state of one broker (or of several sharing one database)."""

    # This process's name (host:pid:tag): in the leases it writes and its heartbeats.
    node: str
    # Whether the dispatcher may leave an acknowledgement to finish in the background
    # and claim again meanwhile: where acks and claims queue for the same transactions
    # (SQLite's writer), such a claim costs no transaction of its own. Elsewhere
    # (PostgreSQL: measured, delivery to one receiver 4,800 -> 2,300 a second) every
    # slot freed before its ack commits would make a claim of its own, where awaiting
    # the ack frees slots a batch of acks at a time.
    background_acks: bool = False

    @abc.abstractmethod
    async def open(self) -> None:
        """Create or migrate the schema and get ready for use."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish pending writes and release every resource."""

    def clock(self) -> float:
        """Now, in Unix seconds, as every node sharing this store counts it."""
        return time.time()

    def watch(  # noqa: B027 - optional: a backend with nothing to report keeps it
        self, on_due: Callable[[], None], on_catalog: Callable[[], None]
    ) -> None:
        """Call `on_due` when another node made deliveries due (a publish, a redrive)
        and `on_catalog` when it changed connections, subscriptions or keys. A store
        that only one process uses has no other node to hear from: the default does
        nothing. A hint only: callers poll too, since a notification can be lost."""

    @abc.abstractmethod
    async def catalog_version(self) -> int:
        """A number that changes whenever connections, subscriptions, groups or API
        keys change, through any node sharing the store: what a node caches of them
        is stale once this moves."""

    @abc.abstractmethod
    async def heartbeat(self, node: NodeInfo) -> None:
        """Record that `node` is alive and what it is doing (its `seen_at`)."""

    @abc.abstractmethod
    async def nodes(self, *, seen_since: float) -> list[NodeInfo]:
        """Nodes whose last heartbeat is at or after `seen_since`, by name."""

    @abc.abstractmethod
    async def save_receiver_health(self, health: Sequence[ReceiverHealth]) -> None:
        """Keep each receiver's health for after a restart. Callers save what changed
        every few seconds and at shutdown, not per attempt. Of two saves of one
        receiver (two nodes) the one with the later `changed_at` stays."""

    @abc.abstractmethod
    async def receiver_health(self) -> list[ReceiverHealth]:
        """The saved health of every active subscription that has any, by id."""

    # Not abstract on purpose: a backend may have nothing to report.
    def observe_commits(self, callback: Callable[[int, float], None]) -> None:  # noqa: B027
        """Have `callback` called after each group-commit transaction with the number
        of operations in it and its duration in seconds, for metrics. The default does
        nothing: a backend without group commit has nothing to report."""

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
        group: str | None = None,
        filter: Filter | None = None,
        start_at: StartAt = None,
    ) -> Connection:
        """Register a connection under a new random id that was never issued before.

        A receiver is subscribed to `topic` (a name or pattern, in `group` if given,
        with `filter`, from `start_at`) in the same transaction, as `add_subscription`
        does, under the connection's id. `key_id` owns the connection; `secret` signs
        the receiver's deliveries. Raises `Conflict` as `add_subscription` does.
        """

    # Push subscriptions (seed receivers included).

    @abc.abstractmethod
    async def add_subscription(
        self,
        spec: SubscriptionSpec,
        now: float,
        *,
        key_id: str | None,
        secret: str | None,
        paused: bool = False,
        start_at: StartAt = None,
    ) -> Subscription:
        """Create a push subscription under a new random id never issued before;
        `paused`: created paused, so no claim hands out its deliveries until resumed.

        It gets the messages published from now on. With `start_at` (a time, or
        EARLIEST), the retained messages of its topic published at or after it that
        pass its filter become its deliveries too, in publish order; a member joining
        a group that exists takes the group's place and replays nothing. A member of
        an existing group must carry the group's filter, else `Conflict`.
        """

    @abc.abstractmethod
    async def seek(self, subscription_id: int, time: float, now: float) -> SeekResult | None:
        """Move a subscription (a group member: its whole group) to `time`, as of `now`.

        Its pending deliveries of messages published before `time` are settled as
        acknowledged (dead letters stay). Every retained message published at or after
        `time` that its topic and filter match is due again from attempt 1, in publish
        order (at its deliver_at if later), whatever became of it before: delivered,
        dead-lettered, pending or never routed to it. A delivery out under a live lease
        is left to finish. None if no such active subscription."""

    @abc.abstractmethod
    async def subscription(self, subscription_id: int) -> Subscription | None:
        """An active subscription, or None."""

    @abc.abstractmethod
    async def subscriptions(
        self, *, topic: str | None = None, cursor: str | None = None, limit: int = 100
    ) -> Page[Subscription]:
        """Active subscriptions by id; with `topic`, those whose topic or pattern
        matches it. Raises `BadCursor` for a cursor this list did not hand out."""

    @abc.abstractmethod
    async def update_subscription(
        self, subscription_id: int, changes: SubscriptionChanges
    ) -> Subscription | None:
        """Apply a partial update; None if no such active subscription. Raises
        `Conflict` for a filter change on a group member while others remain."""

    @abc.abstractmethod
    async def set_paused(self, subscription_id: int, paused: bool) -> Subscription | None:
        """Pause (nothing is claimed for it; deliveries keep accumulating) or resume."""

    @abc.abstractmethod
    async def resume(self, subscription_id: int, now: float) -> Subscription | None:
        """Turn a paused or disabled subscription back on, as a new run of attempts (its
        `failing_since` is cleared). Resuming a disabled one publishes
        `subscription.resumed` on `mq.events` in the same transaction (events.py). None
        if no such subscription is active."""

    # Endpoint health (store/endpoint_health.py): each settlement batch keeps every push
    # subscription's `failing_since`, the time of its first failed attempt since its
    # last success.

    @abc.abstractmethod
    async def failing_subscriptions(self) -> list[Subscription]:
        """Active push subscriptions, neither paused nor disabled, whose attempts all
        failed since their `failing_since`, by id."""

    @abc.abstractmethod
    async def disable_subscription(
        self, subscription_id: int, *, failing_since: float, now: float, reason: str
    ) -> Subscription | None:
        """Disable a failing subscription: nothing is claimed for it and nothing of it
        expires until `resume`. Only if it is still failing since `failing_since` (no
        success ended that run meanwhile) and is not disabled yet, so of nodes deciding
        together one does it. Publishes `subscription.disabled` on `mq.events` in the
        same transaction. None if it did nothing."""

    @abc.abstractmethod
    async def remove_subscription(self, subscription_id: int, now: float) -> Subscription | None:
        """End a subscription (a seed receiver's connection too). Its pending
        deliveries and dead letters are dropped, except a group's, which stay for the
        other members while any remain."""

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
    async def connection(self, connection_id: int) -> Connection | None:
        """A connection that is currently connected, or None."""

    @abc.abstractmethod
    async def connections(self) -> list[Connection]:
        """Every connection that is currently connected."""

    # Messages and their deliveries.

    @abc.abstractmethod
    async def publish(
        self,
        messages: Sequence[NewMessage],
        *,
        max_backlog: int = 0,
        dedup_since: float = 0.0,
    ) -> list[Published]:
        """Commit messages and their deliveries in one transaction, all or nothing.

        Each message gets one delivery per matching ungrouped subscription and one
        per matching group (topic pattern and filter both hold), due at its
        `deliver_at` or at once. A message no subscription takes is done at once: it
        is kept for the retention window like a delivered one, where only a seek or a
        `start_at` reaches it. A message whose (publisher_key, idempotency_key) was published since
        `dedup_since` enqueues nothing and answers with the first id, `duplicate`.
        Concurrent calls may share one transaction (group commit); each returns only
        once durable. With `max_backlog` > 0, raises `BacklogFull` (storing nothing)
        when the batch would take the messages not fully delivered (dead letters
        count) past `max_backlog`.
        """

    @abc.abstractmethod
    async def message(self, message_id: str, now: float) -> StoredMessage | None:
        """A kept message with the state of each of its deliveries as of `now`, and
        each delivery's kept attempts."""

    @abc.abstractmethod
    async def sweep(self, *, delivered_before: float, dedup_before: float) -> int:
        """Forget fully delivered messages done before `delivered_before` and
        idempotency keys recorded before `dedup_before`; returns messages removed.
        Nodes sharing a store may all call it: one sweeps at a time, the others find
        nothing to do meanwhile."""

    @abc.abstractmethod
    async def expire(self, *, now: float, max_age: float) -> int:
        """Dead-letter the pending deliveries that nobody holds under a live lease and
        whose message is older than the max-age of its subscription (its retry
        policy's `max_age_seconds`, else `max_age`; a group's: its members' longest),
        counted from its deliver_at for a delayed message: those the retry policy never
        judged because they were never attempted (paused, or stuck in a backlog).
        Returns how many. Nodes sharing a store may all call it."""

    @abc.abstractmethod
    async def claim(
        self,
        *,
        limit: int,
        now: float,
        lease_seconds: float,
        per_subscription_limit: int,
        busy: Mapping[int, int],
        for_subscription: int | None = None,
    ) -> Claim:
        """Lease up to `limit` due deliveries, oldest first.

        Without `for_subscription` (the dispatcher's claim), push subscriptions' only.
        With it (a consumer's pull), only that pull subscription's: its own and its
        group's deliveries, up to `limit`, all leased to it; `busy` and
        `per_subscription_limit` do not apply.

        A subscription gets at most `cap - busy[id]` of them, where `cap` is its own
        max_concurrency if it has one, else `per_subscription_limit`, so one slow
        receiver cannot fill the caller's buffer; paused subscriptions get none. A
        group's deliveries go to its members with room, spread across them. Of the
        deliveries with one ordering key for one subscription or group, only the
        oldest unfinished one is ever handed out.
        Each claimed delivery's attempt count goes up by one; if the lease expires
        unacknowledged the delivery is due again and may be claimed by anyone.
        """

    # A claim made inside publishes' own transactions.

    def offer_claim(self, offer: ClaimOffer, answer: Callable[[Claim | None], None]) -> bool:
        """Have the next transaction that publishes deliveries due now run `offer` as
        `claim` would, inside it, once its publishes are written, and `answer` with what
        it leased once it commits (None: it rolled back, and leased nothing), on the
        event loop, before any of its publishes returns. A publish whose deliveries
        that claim took all of says so (`Published.claimed`): the dispatcher already
        holds them. One offer at a time; a new one replaces one not yet taken.

        Why: at a steady, modest rate each message otherwise costs a transaction for
        its publish and another for its claim, and the claim stands between the
        publish and the receiver. False if this store claims only when asked
        (`claim`): then nothing was offered."""
        return False

    def withdraw_claim(self) -> bool:
        """Take back the offer: True if it was not taken (or none was out); False if a
        transaction is running it, and its `answer` is on its way."""
        return True

    # Each settlement also adds the attempt to the delivery's history (`attempted_at`:
    # when it was sent, the store's clock if not given; `duration`: until its outcome),
    # in the same transaction; a delivery keeps its newest attempts (store/history.py).

    async def ack(
        self,
        delivery: ClaimedDelivery,
        *,
        now: float = 0.0,
        status: int | None = None,
        attempted_at: float | None = None,
        duration: float | None = None,
    ) -> None:
        """The receiver took it (answering `status` at `now`): the delivery is done."""
        sent_at = self._sent_at(attempted_at)
        await self._settle(
            Settlement(delivery, now, status, attempted_at=sent_at, duration=duration)
        )

    def ack_soon(
        self,
        delivery: ClaimedDelivery,
        *,
        now: float,
        status: int | None,
        attempted_at: float,
        duration: float,
    ) -> asyncio.Future[None]:
        """`ack`, without waiting for it: the future settles once it is recorded (the
        dispatcher's worker goes on to its next delivery meanwhile)."""
        return self._settle_soon(
            Settlement(delivery, now, status, attempted_at=attempted_at, duration=duration)
        )

    def _settle_soon(self, settlement: Settlement) -> asyncio.Future[None]:
        """`_settle`, as a future; a backend that can queue without a task does."""
        return asyncio.ensure_future(self._settle(settlement))

    async def retry(
        self,
        delivery: ClaimedDelivery,
        *,
        due_at: float,
        error: str,
        status: int | None,
        attempted_at: float | None = None,
        duration: float | None = None,
    ) -> None:
        """The attempt failed: try again at `due_at`."""
        sent_at = self._sent_at(attempted_at)
        await self._settle(
            Settlement(
                delivery,
                due_at,
                status,
                error,
                due_at=due_at,
                attempted_at=sent_at,
                duration=duration,
            )
        )

    async def dead_letter(
        self,
        delivery: ClaimedDelivery,
        *,
        now: float,
        error: str,
        status: int | None,
        attempted_at: float | None = None,
        duration: float | None = None,
    ) -> None:
        """The attempt failed and no retries are left: keep it as a dead letter."""
        sent_at = self._sent_at(attempted_at)
        await self._settle(
            Settlement(
                delivery, now, status, error, dead=True, attempted_at=sent_at, duration=duration
            )
        )

    @abc.abstractmethod
    async def _settle(self, settlement: Settlement) -> None:
        """Record how an attempt ended (acks, retries and dead letters alike), only if
        its lease still holds; settlements may be batched with others."""

    def _sent_at(self, attempted_at: float | None) -> float:
        return self.clock() if attempted_at is None else attempted_at

    @abc.abstractmethod
    async def renew(
        self, deliveries: Sequence[ClaimedDelivery], *, now: float, lease_seconds: float
    ) -> list[int]:
        """Extend the leases of claimed deliveries to `now + lease_seconds`; returns the
        ids of those whose lease is no longer theirs (it expired and another claim took
        the delivery, or it was settled): those can no longer be settled by this claim."""

    @abc.abstractmethod
    async def leased(
        self, subscription_id: int, leases: Collection[tuple[int, str]], *, now: float
    ) -> list[ClaimedDelivery]:
        """Of these deliveries (delivery id, lease), those that `subscription_id` holds
        under that very lease, still live at `now`, as its claim handed them out: what
        a pull consumer may still ack, nack or extend. A lease that ran out, was claimed
        again or settled since is left out."""

    @abc.abstractmethod
    async def release(
        self, deliveries: Sequence[ClaimedDelivery], now: float, *, attempted: bool = False
    ) -> None:
        """Give claimed deliveries back (shutdown): due now. Their attempt is undone,
        unless `attempted`: one that was being sent may have reached the receiver, so
        it counts, and the next try carries the next attempt number."""

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
    async def dead_letters(
        self, *, subscription_id: int | None = None, cursor: str | None = None, limit: int = 100
    ) -> Page[DeadLetter]:
        """Dead letters, oldest first (all, or one subscription's)."""

    @abc.abstractmethod
    async def redrive(
        self, now: float, receiver_id: int | None = None, *, message_id: str | None = None
    ) -> int:
        """Queue dead letters again from attempt 1: all, one subscription's, one
        message's, or with both the one dead letter of that message for that
        subscription.

        Returns how many were queued.
        """

    @abc.abstractmethod
    async def purge_dead_letters(
        self,
        subscription_id: int | None = None,
        *,
        now: float,
        message_id: str | None = None,
    ) -> int:
        """Drop dead letters for good (chosen as `redrive` chooses them); returns how
        many. A message left with nothing to deliver is done as of `now`."""

    @abc.abstractmethod
    async def topics(self, *, cursor: str | None = None, limit: int = 100) -> Page[TopicInfo]:
        """Known topics by name."""

    @abc.abstractmethod
    async def topic(self, name: str) -> TopicInfo | None:
        """One known topic, or None."""

    @abc.abstractmethod
    async def stats(self) -> BrokerStats:
        """Receivers, senders, undelivered work and completed deliveries."""

    # What operators watch: readiness, metrics and the status feed.

    @abc.abstractmethod
    async def ping(self) -> None:
        """Return once the store has served a trivial operation the way it serves
        publishes; raise `StoreUnavailable` if it cannot (for example once closed), or
        while its writes fail (a full disk) and none has succeeded since."""

    @abc.abstractmethod
    async def topic_backlogs(self) -> list[TopicBacklog]:
        """Per topic with undelivered messages, sorted by topic: how many messages some
        receiver has yet to acknowledge (claimed ones included), and when the oldest of
        them was published. A message whose only unfinished deliveries are dead letters
        does not count, nor one that no subscription took."""

    @abc.abstractmethod
    async def dead_letter_count(self) -> int:
        """How many dead letters are kept."""
