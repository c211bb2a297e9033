"""What the in-memory store writes when messages arrive and attempts end: messages and
their deliveries, the broker's own events (events.py), and settlements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mqpy.model.domain import Attempt, NewMessage, Published
from mqpy.model.events import EVENTS_TOPIC
from mqpy.store.batching import Settlement
from mqpy.store.endpoint_health import (
    Expired,
    dead_letter_events,
    expiry_events,
    routed_events,
    turns,
)
from mqpy.store.history import MAX_ATTEMPTS_KEPT, outcome_of
from mqpy.store.memory_state import (
    DEAD,
    DELIVERED,
    PENDING,
    DeliveryRecord,
    MemoryState,
    MessageRecord,
)
from mqpy.store.routes import Target


def add_message(
    state: MemoryState, message: NewMessage, targets: Sequence[Target]
) -> MessageRecord:
    """Keep a message and one delivery per target, due at its deliver_at or at once. A
    message no target takes is done at once, kept for a seek or a start_at."""
    record = MessageRecord(
        seq=state.next_seq(),
        id=message.id,
        topic=message.topic,
        body=message.body,
        published_at=message.published_at,
        attributes=dict(message.attributes),
        ordering_key=message.ordering_key,
        deliver_at=message.deliver_at,
        done_at=None if targets else message.published_at,
    )
    state.messages[record.seq] = record
    state.message_seqs[record.id] = record.seq
    due = max(message.published_at, message.deliver_at or 0.0)
    for target in targets:
        add_delivery(state, record, target.subscription_id, target.group_id, due)
    return record


def add_delivery(
    state: MemoryState,
    message: MessageRecord,
    subscription_id: int | None,
    group_id: int | None,
    due_at: float,
) -> None:
    delivery_id = state.next_delivery_id()
    state.deliveries[delivery_id] = DeliveryRecord(
        id=delivery_id,
        seq=message.seq,
        subscription_id=subscription_id,
        group_id=group_id,
        ordering_key=message.ordering_key,
        due_at=due_at,
    )


def publish(
    state: MemoryState, messages: Sequence[NewMessage], dedup_since: float
) -> list[Published]:
    """Keep `messages` (those whose idempotency key is not a repeat) and say what each did."""
    routes = state.current_routes()
    results: list[Published] = []
    for message in messages:
        if message.idempotency_key is not None:
            key = (message.publisher_key or "", message.idempotency_key)
            earlier = state.idempotency.get(key)
            if earlier is not None and earlier[1] >= dedup_since:
                results.append(Published(earlier[0], duplicate=True))
                continue
            state.idempotency[key] = (message.id, message.published_at)
        targets = routes.for_message(message.topic, message.attributes)
        add_message(state, message, targets)
        state.count_published(message.topic, 1, message.published_at)
        results.append(Published(message.id, deliveries=len(targets)))
    return results


def publish_events(state: MemoryState, events: Sequence[dict[str, Any]], at: float) -> None:
    """Keep the events some subscription takes, as messages on `mq.events`."""
    routed = routed_events(state.current_routes(), events, at)
    for message, targets in routed:
        add_message(state, message, targets)
    if routed:
        state.count_published(EVENTS_TOPIC, len(routed), at)


def publish_expired(
    state: MemoryState, expired: Sequence[DeliveryRecord], error: str, at: float
) -> None:
    """The `delivery.dead_lettered` events of deliveries expiry just dead-lettered."""
    found: list[Expired] = []
    for delivery in expired:
        message = state.message_of(delivery)
        assert delivery.subscription_id is not None
        found.append((delivery.subscription_id, message.id, message.topic, delivery.attempts))
    if found:
        publish_events(state, expiry_events(state.current_routes(), found, error, at), at)


def settle(state: MemoryState, settlement: Settlement) -> None:
    """Record how an attempt ended, only if its lease still holds; else whoever holds
    the lease now reports the outcome."""
    _record_health(state, settlement)
    held = state.deliveries.get(settlement.delivery.delivery_id)
    if held is None or held.lease is None or held.lease != settlement.delivery.lease:
        return
    if settlement.dead or settlement.due_at is not None:
        _record_failure(held, settlement)
    held.lease = None
    held.last_status = settlement.status
    held.last_error = settlement.error
    if settlement.due_at is not None:
        held.due_at = settlement.due_at
    elif settlement.dead:
        held.state = DEAD
        held.dead_at = settlement.at
        events = dead_letter_events(state.current_routes(), [settlement])
        publish_events(state, events, settlement.at)
    else:
        held.state = DELIVERED
        held.delivered_at = settlement.at
        held.sent_at = settlement.attempted_at
        held.duration = settlement.duration
        state.delivered += 1
        state.finish_messages({held.seq}, settlement.at)


def _record_failure(held: DeliveryRecord, settlement: Settlement) -> None:
    """A failed attempt goes into the delivery's history, which keeps the newest ones."""
    delivery = settlement.delivery
    held.history.append(
        Attempt(
            delivery.attempt,
            delivery.subscription_id,
            settlement.attempted_at,
            settlement.duration,
            outcome_of(settlement),
            settlement.status,
            settlement.error,
        )
    )
    del held.history[:-MAX_ATTEMPTS_KEPT]


def _record_health(state: MemoryState, settlement: Settlement) -> None:
    """Keep the push subscription's `failing_since` (store/endpoint_health.py): a
    success ends a run of failures that began no later than it, and a failure starts
    a run where none is kept."""
    for turn in turns([settlement]):
        record = state.subscriptions.get(turn.subscription_id)
        if record is None or record.spec.kind != "push":
            continue
        stored = record.failing_since
        ends = (
            stored is not None
            and turn.succeeded_at is not None
            and stored <= turn.succeeded_at
            and stored != turn.failing_since
        )
        starts = turn.failing_since is not None and stored is None
        if ends or starts:
            record.failing_since = turn.failing_since


def pending(state: MemoryState) -> list[DeliveryRecord]:
    return [d for d in state.deliveries.values() if d.state == PENDING]
