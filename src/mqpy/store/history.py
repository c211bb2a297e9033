"""A delivery's attempt history: what both SQL stores keep of each attempt.

A failed attempt (a retry or a dead letter) adds one row to `delivery_attempts`, in the
same statement batch and transaction as the outcome it records. The attempt that
delivers writes no row: its time and duration go on the delivery's own row with the ack
(`sent_at`, `duration`), and reading a journey puts it after the failures. Most
deliveries succeed at once, so most write no history row at all: a row and an index
entry per delivery cost the hot path about a tenth of its CPU (measured in bench's
delivery figures, 95 against 84 µs per delivery).

A delivery keeps its newest `MAX_ATTEMPTS_KEPT` failures (a failure trims older ones),
plus the success that ends its journey; the rows go with their message when retention
sweeps it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from mqpy.model.domain import Attempt, AttemptOutcome
from mqpy.store.batching import Settlement

MAX_ATTEMPTS_KEPT = 20


def outcome_of(settlement: Settlement) -> AttemptOutcome:
    if settlement.dead:
        return AttemptOutcome.DEAD
    if settlement.due_at is not None:
        return AttemptOutcome.RETRY
    return AttemptOutcome.DELIVERED


def attempt_row(settlement: Settlement) -> tuple[Any, ...]:
    """(delivery id, lease, attempt, subscription id, sent at, duration, outcome,
    status, error): what the stores insert, joined to the delivery whose lease holds."""
    delivery = settlement.delivery
    return (
        delivery.delivery_id,
        delivery.lease,
        delivery.attempt,
        delivery.subscription_id,
        settlement.attempted_at,
        settlement.duration,
        outcome_of(settlement).value,
        settlement.status,
        settlement.error,
    )


def failed(settlements: Sequence[Settlement]) -> list[Settlement]:
    """The settlements that add a history row: retries and dead letters."""
    return [s for s in settlements if s.dead or s.due_at is not None]


def failures(settlements: Sequence[Settlement]) -> list[int]:
    """The deliveries whose history may have outgrown its bound: those that failed."""
    return sorted({s.delivery.delivery_id for s in settlements if s.dead or s.due_at is not None})


# Reading a message's history: both stores select these columns of its rows, ordered
# by delivery id then row id (oldest first).
HISTORY_COLUMNS = "delivery_id, attempt, subscription_id, sent_at, duration, outcome, status, error"


def histories(rows: Iterable[Iterable[Any]]) -> dict[int, tuple[Attempt, ...]]:
    """Rows of HISTORY_COLUMNS, by delivery id."""
    by_delivery: dict[int, list[Attempt]] = defaultdict(list)
    for delivery_id, attempt, subscription_id, at, duration, outcome, status, error in rows:
        by_delivery[delivery_id].append(
            Attempt(attempt, subscription_id, at, duration, AttemptOutcome(outcome), status, error)
        )
    return {delivery_id: tuple(kept) for delivery_id, kept in by_delivery.items()}
