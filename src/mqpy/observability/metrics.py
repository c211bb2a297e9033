"""The Prometheus instruments, in a registry that belongs to one server.

Counters, histograms and the in-flight gauge are counted as things happen and written
to the instruments in batches (metric_batches.py). In a group of processes
(`--processes N`) they use prometheus_client's multiprocess mode: each process writes
its values to files of its own in the directory the supervisor made
(PROMETHEUS_MULTIPROC_DIR), they are registered nowhere, and a scrape of any process
reads every process's files through `GroupCollector`, so it shows the group's totals.
Gauges that describe the store (backlog, oldest undelivered message, dead letters) and
the receivers are computed when scraped by `LiveGauges`, from figures the /metrics
route read from the store just before: a collector's `collect()` is synchronous and
must not wait for SQLite.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mqpy.observability.group_collector import GroupCollector
from mqpy.observability.metric_batches import PendingCounts, PendingObservations
from mqpy.observability.receivers import ReceiverState

# One HTTP attempt: bounded by --delivery-timeout (10 s by default).
ATTEMPT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Publish to acknowledgement: milliseconds when all is well, hours when retrying.
LATENCY_BUCKETS = (
    *(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    *(60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0),
)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0)


class Metrics:
    """Counters and histograms of the hot path, gathered in plain Python between
    flushes (metric_batches.py) and written to the instruments by `flush`.

    With `group_dir` (one of `--processes N`), the instruments write to that shared
    directory and `registry` collects every process's values from it instead."""

    def __init__(self, registry: CollectorRegistry, group_dir: str | None = None) -> None:
        # In a group: registered nowhere, read back from every process's files.
        own = registry if group_dir is None else None
        if group_dir is not None:
            registry.register(GroupCollector(group_dir))
        self._published = PendingCounts(
            Counter(
                "mqpy_messages_published_total",
                "Messages accepted and committed to the store, by topic.",
                ["topic"],
                registry=own,
            )
        )
        self._delivered = PendingCounts(
            Counter(
                "mqpy_messages_delivered",
                "Deliveries acknowledged by their receiver, by the message's topic.",
                ["topic"],
                registry=own,
            )
        )
        self._outcomes = PendingCounts(
            Counter(
                "mqpy_deliveries_total",
                "Delivery attempts by outcome: delivered (acknowledged), retried (failed, "
                "tried again later) or dead_lettered (failed for the last time).",
                ["outcome"],
                registry=own,
            )
        )
        self._requests = PendingCounts(
            Counter(
                "mqpy_http_requests_total",
                "HTTP requests answered, by what served them: fast_lane (the seed protocol "
                "and plain publishes, api/fast_lane.py) or aiohttp (everything else).",
                ["served_by"],
                registry=own,
            )
        )
        self._attempts = PendingCounts(
            Counter(
                "mqpy_delivery_attempts_total",
                "HTTP attempts to deliver a message to a receiver, whatever their outcome.",
                registry=own,
            )
        )
        duration = Histogram(
            "mqpy_delivery_duration_seconds",
            "Time of one HTTP delivery attempt, until the receiver answered or it failed.",
            buckets=ATTEMPT_BUCKETS,
            registry=own,
        )
        self._duration = PendingObservations(duration, ATTEMPT_BUCKETS)
        latency = Histogram(
            "mqpy_delivery_latency_seconds",
            "Time from publish (a delayed message: from its deliver_at) to the receiver's "
            "acknowledgement, retries included.",
            buckets=LATENCY_BUCKETS,
            registry=own,
        )
        self._latency = PendingObservations(latency, LATENCY_BUCKETS)
        # Observed by the store's writer thread, once per transaction: written at once.
        self._commit = Histogram(
            "mqpy_store_commit_seconds",
            "Time to run and commit one store transaction (a group commit).",
            buckets=COMMIT_BUCKETS,
            registry=own,
        )
        self._batch = Histogram(
            "mqpy_store_batch_size",
            "Operations sharing one store transaction (group commit).",
            buckets=BATCH_BUCKETS,
            registry=own,
        )
        in_flight = Gauge(
            "mqpy_deliveries_in_flight",
            "Delivery attempts under way (HTTP requests sent).",
            # A group shows the sum over its live processes.
            multiprocess_mode="livesum",
            registry=own,
        )
        self._in_flight = 0
        # Alone, the gauge reads the count when scraped. In a group it is written to
        # the shared file at each flush.
        self._shared_in_flight: Gauge | None = in_flight
        self._written_in_flight = 0
        if group_dir is None:
            in_flight.set_function(lambda: self._in_flight)
            self._shared_in_flight = None
            # CPU, memory and open files of this process, as every exporter has them;
            # prometheus_client has no group figure for these, so a group leaves them out.
            ProcessCollector(registry=registry)

    def published(self, topic: str, count: int = 1) -> None:
        self._published.add(topic, count)

    def attempt_started(self) -> None:
        self._in_flight += 1

    def request_served(self, served_by: str) -> None:
        self._requests.add(served_by)

    def attempted(self, seconds: float) -> None:
        self._in_flight -= 1
        self._attempts.add()
        self._duration.add(seconds)

    def delivered(self, topic: str, latency: float) -> None:
        self._outcomes.add("delivered")
        self._delivered.add(topic)
        self._latency.add(max(0.0, latency))

    def retried(self) -> None:
        self._outcomes.add("retried")

    def dead_lettered(self) -> None:
        self._outcomes.add("dead_lettered")

    def committed(self, operations: int, seconds: float) -> None:
        """Called in the store's writer thread or the event loop's; prometheus_client
        is thread-safe."""
        self._batch.observe(operations)
        self._commit.observe(seconds)

    def flush(self) -> None:
        """Write what was counted since the last flush to the instruments."""
        self._published.flush()
        self._requests.flush()
        self._delivered.flush()
        self._outcomes.flush()
        self._attempts.flush()
        self._duration.flush()
        self._latency.flush()
        if self._shared_in_flight is not None and self._in_flight != self._written_in_flight:
            self._shared_in_flight.set(self._in_flight)
            self._written_in_flight = self._in_flight

    async def flush_every(self, seconds: float) -> None:
        """Flush every `seconds` until cancelled (in a group, for the other processes)."""
        while True:
            await asyncio.sleep(seconds)
            self.flush()


@dataclass(frozen=True, slots=True)
class TopicFigures:
    topic: str
    backlog: int
    oldest_undelivered_age: float  # seconds; 0 with nothing undelivered


@dataclass(frozen=True, slots=True)
class Gauges:
    """What the scrape-time gauges show. The store's figures are None when the store
    could not be read; those gauges are then left out rather than shown stale."""

    topics: list[TopicFigures] | None
    dead_letters: int | None
    receivers: dict[ReceiverState, int]


class LiveGauges(Collector):
    """Gauges computed at scrape time by `read`, which must not block."""

    def __init__(self, read: Callable[[], Gauges]) -> None:
        self._read = read

    def describe(self) -> Iterable[Metric]:
        return _families()

    def collect(self) -> Iterable[Metric]:
        gauges = self._read()
        backlog, oldest, dead, receivers = _families()
        for state in ReceiverState:
            receivers.add_metric([state.value], gauges.receivers.get(state, 0))
        families: list[Metric] = [receivers]
        if gauges.topics is not None:
            for topic in gauges.topics:
                backlog.add_metric([topic.topic], topic.backlog)
                oldest.add_metric([topic.topic], topic.oldest_undelivered_age)
            families += [backlog, oldest]
        if gauges.dead_letters is not None:
            dead.add_metric([], gauges.dead_letters)
            families.append(dead)
        return families


def _families() -> tuple[
    GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily
]:
    return (
        GaugeMetricFamily(
            "mqpy_backlog_messages",
            "Messages of the topic some receiver has not acknowledged yet (dead letters "
            "aside), or that wait for a first receiver.",
            labels=["topic"],
        ),
        GaugeMetricFamily(
            "mqpy_oldest_undelivered_age_seconds",
            "Age of the topic's oldest message in the backlog (0 when there is none).",
            labels=["topic"],
        ),
        GaugeMetricFamily("mqpy_dead_letters", "Dead letters kept, waiting for a redrive."),
        GaugeMetricFamily(
            "mqpy_receivers",
            "Connected receivers by state: healthy, retrying (recent attempts failed), "
            "failing (failing for want of the receiver: given fewer at once, paused after "
            "a run of failures), paused (by an operator) or disabled (by the broker, "
            "once every attempt failed for its --disable-after).",
            labels=["state"],
        ),
    )
