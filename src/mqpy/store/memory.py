"""The in-memory reference store: the `Store` interface on plain Python values.

It is the reference semantics, written to be obviously right rather than fast (a claim
scans every pending delivery), and what in-process tests of the broker and the
dispatcher run on, driven by a fake clock. It keeps nothing on disk, so mq-py does not
offer it to users: a broker whose 200 means "on disk" cannot run on it.

Several `MemoryStore`s on one `MemoryState` are nodes sharing one store; closing one and
opening another on its state is a restart (memory_state.py).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from mqpy.model.domain import (
    BrokerStats,
    Claim,
    ClaimedDelivery,
    DeadLetter,
    Mode,
    NewMessage,
    Page,
    Published,
    StoredMessage,
    TopicInfo,
    name_cursor,
)
from mqpy.model.errors import BacklogFull
from mqpy.model.topics import matches as topic_matches
from mqpy.store import memory_claim, memory_writes
from mqpy.store.base import TopicBacklog
from mqpy.store.batching import Settlement
from mqpy.store.expiry import expiry_targets
from mqpy.store.memory_catalog import MemoryCatalog
from mqpy.store.memory_state import (
    DEAD,
    PENDING,
    DeliveryRecord,
    MessageRecord,
)
from mqpy.store.rows import (
    dead_letter_cursor,
    delivery_status,
)


class MemoryStore(MemoryCatalog):
    """The `Store` interface on a `MemoryState`: the catalog (memory_catalog.py), and
    messages, deliveries, dead letters and figures."""

    # Messages and deliveries.

    async def publish(
        self,
        messages: Sequence[NewMessage],
        *,
        max_backlog: int = 0,
        dedup_since: float = 0.0,
    ) -> list[Published]:
        state = self._s()
        if max_backlog > 0 and state.undone_messages() + len(messages) > max_backlog:
            raise BacklogFull(
                f"the broker holds {max_backlog} undelivered messages, its --max-backlog"
            )
        published = memory_writes.publish(state, messages, dedup_since)
        state.made_due(self)
        return published

    async def message(self, message_id: str, now: float) -> StoredMessage | None:
        state = self._s()
        seq = state.message_seqs.get(message_id)
        found = None if seq is None else state.messages.get(seq)
        if found is None:
            return None
        deliveries = [
            delivery_status(
                now,
                d.subscription_id,
                None if d.group_id is None else state.groups[d.group_id].name,
                d.state,
                d.attempts,
                d.last_status,
                d.last_error,
                d.due_at,
                d.lease,
                d.delivered_at,
                d.sent_at,
                d.duration,
                history=tuple(d.history),
            )
            for d in state.deliveries.values()
            if d.seq == found.seq
        ]
        return StoredMessage(
            id=found.id,
            topic=found.topic,
            body=found.body,
            attributes=dict(found.attributes),
            ordering_key=found.ordering_key,
            published_at=found.published_at,
            deliver_at=found.deliver_at,
            deliveries=deliveries,
        )

    async def sweep(self, *, delivered_before: float, dedup_before: float) -> int:
        state = self._s()
        swept = {
            seq
            for seq, m in state.messages.items()
            if m.done_at is not None and m.done_at < delivered_before
        }
        for seq in swept:
            del state.message_seqs[state.messages.pop(seq).id]
        for d in list(state.deliveries_of(swept)):
            del state.deliveries[d.id]
        for key, (_, at) in list(state.idempotency.items()):
            if at < dedup_before:
                del state.idempotency[key]
        return len(swept)

    async def expire(self, *, now: float, max_age: float) -> int:
        state = self._s()
        expired = 0
        for target in expiry_targets(state.current_routes(), now=now, max_age=max_age):
            grouped = target.group_id is not None
            found: list[DeliveryRecord] = []
            for d in memory_writes.pending(state):
                message = state.message_of(d)
                aged_from = max(message.published_at, message.deliver_at or 0.0)
                if (
                    d.of_target(None if grouped else target.subscription_id, target.group_id)
                    and not d.in_flight(now)
                    and aged_from < target.cutoff
                ):
                    d.state, d.dead_at, d.lease, d.last_error = DEAD, now, None, target.error
                    if d.subscription_id is None:
                        d.subscription_id = target.subscription_id
                    found.append(d)
            memory_writes.publish_expired(state, found, target.error, now)
            expired += len(found)
        return expired

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
        return memory_claim.claim(
            self._s(),
            limit=limit,
            now=now,
            lease_seconds=lease_seconds,
            per_subscription_limit=per_subscription_limit,
            busy=busy,
            for_subscription=for_subscription,
        )

    async def _settle(self, settlement: Settlement) -> None:
        memory_writes.settle(self._s(), settlement)

    async def renew(
        self, deliveries: Sequence[ClaimedDelivery], *, now: float, lease_seconds: float
    ) -> list[int]:
        lost = []
        for delivery in deliveries:
            held = self._held(delivery)
            if held is None or held.state != PENDING:
                lost.append(delivery.delivery_id)
            else:
                held.due_at = now + lease_seconds
        return lost

    async def leased(
        self, subscription_id: int, leases: Collection[tuple[int, str]], *, now: float
    ) -> list[ClaimedDelivery]:
        return memory_claim.leased(self._s(), subscription_id, leases, now)

    async def release(
        self, deliveries: Sequence[ClaimedDelivery], now: float, *, attempted: bool = False
    ) -> None:
        for delivery in deliveries:
            held = self._held(delivery)
            if held is not None:
                held.due_at, held.lease = now, None
                held.attempts -= 0 if attempted else 1

    def _held(self, delivery: ClaimedDelivery) -> DeliveryRecord | None:
        """The delivery's record if `delivery`'s lease still holds it."""
        held = self._s().deliveries.get(delivery.delivery_id)
        return held if held is not None and held.lease == delivery.lease else None

    # Dead letters and figures.

    async def dead_letters(
        self, *, subscription_id: int | None = None, cursor: str | None = None, limit: int = 100
    ) -> Page[DeadLetter]:
        state = self._s()
        after = dead_letter_cursor(cursor)
        dead = sorted(
            (
                d
                for d in state.deliveries.values()
                if d.state == DEAD
                and (d.dead_at or 0.0, d.id) > after
                and subscription_id in (None, d.subscription_id)
            ),
            key=lambda d: (d.dead_at or 0.0, d.id),
        )
        page = dead[:limit]
        letters = []
        for d in page:
            m = state.message_of(d)
            assert d.subscription_id is not None and d.dead_at is not None
            letters.append(
                DeadLetter(
                    message_id=m.id,
                    receiver_id=d.subscription_id,
                    attempts=d.attempts,
                    last_error=d.last_error,
                    dead_at=d.dead_at,
                    body=m.body,
                    topic=m.topic,
                    last_status=d.last_status,
                    attributes=dict(m.attributes),
                )
            )
        more = len(dead) > limit
        return Page(letters, f"{page[-1].dead_at!r}:{page[-1].id}" if more else None)

    def _chosen_dead(
        self, subscription_id: int | None, message_id: str | None
    ) -> list[DeliveryRecord]:
        """Dead letters as `redrive` and `purge_dead_letters` choose them."""
        state = self.state
        seq = None if message_id is None else state.message_seqs.get(message_id, -1)
        return [
            d
            for d in state.deliveries.values()
            if d.state == DEAD
            and subscription_id in (None, d.subscription_id)
            and seq in (None, d.seq)
        ]

    async def redrive(
        self, now: float, receiver_id: int | None = None, *, message_id: str | None = None
    ) -> int:
        state = self._s()
        redriven = 0
        for d in self._chosen_dead(receiver_id, message_id):
            if d.group_id is None:
                assert d.subscription_id is not None
                alive = state.active_subscription(d.subscription_id) is not None
            else:
                alive = state.groups[d.group_id].active
            if alive:
                d.state, d.attempts, d.due_at, d.dead_at, d.lease = PENDING, 0, now, None, None
                redriven += 1
        if redriven:
            state.made_due(self)
        return redriven

    async def purge_dead_letters(
        self,
        subscription_id: int | None = None,
        *,
        now: float,
        message_id: str | None = None,
    ) -> int:
        state = self._s()
        doomed = self._chosen_dead(subscription_id, message_id)
        for d in doomed:
            del state.deliveries[d.id]
        state.finish_messages({d.seq for d in doomed}, now)
        return len(doomed)

    async def topics(self, *, cursor: str | None = None, limit: int = 100) -> Page[TopicInfo]:
        after = name_cursor(cursor)
        names = sorted(name for name in self._s().topics if name > after)
        page = [self._topic_info(name) for name in names[:limit]]
        more = len(names) > limit
        return Page(page, names[limit - 1] if more else None)

    async def topic(self, name: str) -> TopicInfo | None:
        return self._topic_info(name) if name in self._s().topics else None

    def _topic_info(self, name: str) -> TopicInfo:
        state = self.state
        backlog = [m.published_at for m in self._backlog() if m.topic == name and m.done_at is None]
        subscriptions = sum(
            1
            for s in state.subscriptions.values()
            if s.active and topic_matches(s.spec.topic, name)
        )
        return TopicInfo(
            name,
            state.topics[name].published,
            len(backlog),
            min(backlog, default=None),
            subscriptions,
        )

    def _backlog(self) -> list[MessageRecord]:
        """Messages some receiver has yet to get: those with a pending delivery."""
        state = self.state
        seqs = {d.seq for d in memory_writes.pending(state)}
        return [state.messages[seq] for seq in sorted(seqs)]

    async def stats(self) -> BrokerStats:
        state = self._s()
        live = await self.connections()
        return BrokerStats(
            receivers=sum(1 for c in live if c.mode is Mode.RECEIVE),
            senders=sum(1 for c in live if c.mode is Mode.SEND),
            queue_length=len(memory_writes.pending(state)),
            completed=state.delivered,
        )

    async def ping(self) -> None:
        self._s()

    async def topic_backlogs(self) -> list[TopicBacklog]:
        self._s()
        by_topic: dict[str, list[float]] = {}
        for m in self._backlog():
            by_topic.setdefault(m.topic, []).append(m.published_at)
        return [TopicBacklog(t, len(times), min(times)) for t, times in sorted(by_topic.items())]

    async def dead_letter_count(self) -> int:
        return sum(1 for d in self._s().deliveries.values() if d.state == DEAD)
