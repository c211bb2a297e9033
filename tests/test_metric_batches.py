"""Counts gathered between flushes read exactly as the same updates made one by one.

`PendingObservations.flush` adds to prometheus_client's own bucket and sum values (it
has no call that observes many values at once); if a new prometheus_client stores a
histogram differently, this fails."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from mqpy.observability.metric_batches import PendingCounts, PendingObservations
from mqpy.observability.metrics import ATTEMPT_BUCKETS, LATENCY_BUCKETS

# On a bound, between bounds, zero, past the last bound, and a value seen twice.
VALUES = [0.0, 0.005, 0.0051, 0.01, 0.3, 0.3, 7.5, 30.0, 31.0, 100_000.0]


def exposition(registry: CollectorRegistry) -> list[str]:
    # The _created lines carry the time each instrument was made: not what is compared.
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if "_created" not in line]


def test_a_flushed_histogram_reads_as_one_observed_value_by_value() -> None:
    for buckets in (ATTEMPT_BUCKETS, LATENCY_BUCKETS):
        one_by_one, batched = CollectorRegistry(), CollectorRegistry()
        observed = Histogram("h", "h", buckets=buckets, registry=one_by_one)
        pending = PendingObservations(
            Histogram("h", "h", buckets=buckets, registry=batched), buckets
        )
        for round_ in range(2):  # a second flush adds to the first
            for value in VALUES[round_:]:
                observed.observe(value)
                pending.add(value)
            assert exposition(batched) != exposition(one_by_one)  # nothing written yet
            pending.flush()
            assert exposition(batched) == exposition(one_by_one)
        pending.flush()  # nothing new: nothing changes
        assert exposition(batched) == exposition(one_by_one)


def test_flushed_counts_read_as_increments_made_one_by_one() -> None:
    one_by_one, batched = CollectorRegistry(), CollectorRegistry()
    labelled = Counter("c", "c", ["topic"], registry=one_by_one)
    plain = Counter("p", "p", registry=one_by_one)
    pending_labelled = PendingCounts(Counter("c", "c", ["topic"], registry=batched))
    pending_plain = PendingCounts(Counter("p", "p", registry=batched))
    for topic, count in [("a", 1), ("b", 3), ("a", 2)]:
        labelled.labels(topic).inc(count)
        pending_labelled.add(topic, count)
        plain.inc()
        pending_plain.add()
    assert exposition(batched) != exposition(one_by_one)
    pending_labelled.flush()
    pending_plain.flush()
    assert exposition(batched) == exposition(one_by_one)
    pending_plain.add()
    pending_plain.flush()
    plain.inc()
    assert exposition(batched) == exposition(one_by_one)
