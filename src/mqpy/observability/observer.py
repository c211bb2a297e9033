"""The one object the broker, the dispatcher and the store report to, and the one the
metrics, readiness and status routes read from.

Reporting is cheap on purpose (a dict lookup and a few counter increments per
delivery); everything that costs something is done when someone reads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from mqpy.core.broker import Broker
from mqpy.model.domain import ClaimedDelivery, NodeInfo, ReceiverHealth, Subscription
from mqpy.model.errors import StoreUnavailable
from mqpy.model.topics import is_pattern
from mqpy.model.topics import matches as topic_matches
from mqpy.observability.feed import (
    NodeStatus,
    ReceiverKind,
    ReceiverStatus,
    StatusFeed,
    TopicStatus,
)
from mqpy.observability.figures import StoreFigures, StoreFiguresCache
from mqpy.observability.group_rates import GroupRates
from mqpy.observability.metric_batches import FLUSH_SECONDS
from mqpy.observability.metrics import Gauges, LiveGauges, Metrics, TopicFigures
from mqpy.observability.rates import RATE_SECONDS, SecondCounts, Throughput, TopicActivity
from mqpy.observability.receivers import Failure, ReceiverActivity, ReceiverState
from mqpy.store import Store

log = logging.getLogger("mqpy.observability")


class Observer:
    """Metrics, per-receiver state and throughput of one broker process."""

    def __init__(
        self,
        store: Store,
        broker: Broker,
        registry: CollectorRegistry,
        clock: Callable[[], float] = time.time,
        group_metrics: str | None = None,
    ) -> None:
        """`group_metrics`: the directory a `--processes` group shares its metrics in."""
        self.registry = registry
        self._store = store
        self._broker = broker
        self._clock = clock
        self._metrics = Metrics(registry, group_metrics)
        self._figures = StoreFiguresCache(store)
        self._scraped: StoreFigures | None = None
        self._throughput = Throughput()
        self._topics: dict[str, TopicActivity] = {}
        self._receivers: dict[int, ReceiverActivity] = {}
        # Receivers whose health changed since it was last saved (health_keeper.py).
        self._health_changed: set[int] = set()
        # In a group, the rates count what every process did (group_rates.py), not
        # what this one saw.
        self._group_rates = (
            None
            if group_metrics is None
            else GroupRates(group_metrics, self._throughput, self._topic, clock)
        )
        registry.register(LiveGauges(self._gauges))
        store.observe_commits(self._metrics.committed)

    # Reported by the broker, once per accepted message.

    def published(self, topic: str, count: int = 1) -> None:
        """`count` messages were published to `topic` (a batch is counted at once)."""
        self._metrics.published(topic, count)
        if self._group_rates is None:
            now = self._clock()
            self._throughput.published.add(now, count)
            self._topic(topic).published.add(now, count)

    def request_served(self, served_by: str) -> None:
        """An HTTP request was answered, by the fast lane or by aiohttp."""
        self._metrics.request_served(served_by)

    # Reported by the dispatcher, per delivery attempt.

    def attempt_started(self, subscription_id: int) -> None:
        receiver = self._receivers.get(subscription_id)
        if receiver is None:
            receiver = self._receivers[subscription_id] = ReceiverActivity()
        receiver.in_flight += 1
        self._metrics.attempt_started()

    def attempt_ended(self, subscription_id: int, seconds: float) -> None:
        self._metrics.attempted(seconds)
        receiver = self._receivers.get(subscription_id)
        if receiver is not None:  # None if it disconnected meanwhile
            receiver.in_flight -= 1

    def window_changed(self, subscription_id: int, size: int | None) -> None:
        """The receiver's adaptive window after an answer (delivery/window.py)."""
        receiver = self._receivers.get(subscription_id)
        if receiver is not None:  # None if it disconnected meanwhile
            receiver.window = size

    def delivered(self, delivery: ClaimedDelivery, acked_at: float) -> None:
        # From when it was due: a delayed message's delay is not delivery latency.
        due = max(delivery.published_at, delivery.deliver_at or 0.0)
        # By the message's topic: a receiver's own may be a pattern.
        self._metrics.delivered(delivery.topic, acked_at - due)
        if self._group_rates is None:
            self._throughput.delivered.add(acked_at)
            self._topic(delivery.topic).delivered.add(acked_at)
        receiver = self._receivers.get(delivery.subscription_id)
        if receiver is not None:
            receiver.succeeded(acked_at)
            self._health_changed.add(delivery.subscription_id)

    def failed(
        self,
        delivery: ClaimedDelivery,
        *,
        at: float,
        reason: str,
        status: int | None,
        unavailable: bool,
        dead: bool,
    ) -> None:
        """An attempt failed; `unavailable` if it failed for want of the receiver (no
        connection, no answer, 5xx, 429) since the receiver's last success, `dead` if the
        delivery was dead-lettered rather than scheduled for a retry."""
        if dead:
            self._metrics.dead_lettered()
        else:
            self._metrics.retried()
        if self._group_rates is None:
            self._throughput.failed.add(at)
        receiver = self._receivers.get(delivery.subscription_id)
        if receiver is not None:
            failure = Failure(at, delivery.message_id, delivery.attempt, reason, status)
            receiver.failed(failure, unavailable=unavailable)
            self._health_changed.add(delivery.subscription_id)

    def last_error(self, subscription_id: int) -> str | None:
        """What the receiver's latest failed attempt said, as this process knows it."""
        activity = self._receivers.get(subscription_id)
        return None if activity is None else activity.last_error

    def forget(self, subscription_id: int) -> None:
        """The receiver disconnected."""
        self._receivers.pop(subscription_id, None)
        self._health_changed.discard(subscription_id)

    # Receivers' health across restarts (health_keeper.py).

    def restore_health(self, saved: list[ReceiverHealth]) -> None:
        """Take up the health saved before a restart, for receivers not seen since."""
        for health in saved:
            if health.subscription_id not in self._receivers:
                self._receivers[health.subscription_id] = ReceiverActivity.restored(health)

    def changed_health(self) -> list[ReceiverHealth]:
        """The health of receivers whose attempts ended since the last call."""
        changed = sorted(self._health_changed)
        self._health_changed.clear()
        return [self._receivers[sid].health(sid) for sid in changed if sid in self._receivers]

    def health_unsaved(self, health: list[ReceiverHealth]) -> None:
        """Saving failed: save these again next time."""
        self._health_changed.update(h.subscription_id for h in health)

    async def start_following_group(self) -> None:
        """In a `--processes` group, start counting the group's figures from now (call
        before listening); alone, nothing."""
        if self._group_rates is not None:
            await self._group_rates.start()

    async def follow_group(self) -> None:
        """In a `--processes` group, keep the rates the group's, and this process's
        metrics flushed for the others to read, until cancelled; alone, return at once."""
        if self._group_rates is not None:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._group_rates.run())
                tasks.create_task(self._metrics.flush_every(FLUSH_SECONDS))

    def flush_metrics(self) -> None:
        """Write what the metrics counted so far (at stop: nothing counted is lost)."""
        self._metrics.flush()

    # Read by the routes.

    async def scrape(self, encode: Callable[[CollectorRegistry], bytes]) -> bytes:
        """The registry encoded by `encode`, with the store's figures read first."""
        try:
            figures: StoreFigures | None = await self._figures.get()
        except StoreUnavailable as exc:
            log.warning("metrics without the store's figures: %s", exc)
            figures = None
        # No await from here on, so no other scrape can swap the figures in between.
        self._scraped = figures
        self._metrics.flush()
        return encode(self.registry)

    async def ready(self) -> None:
        """Return once the store answered; StoreUnavailable if it cannot."""
        await self._store.ping()

    async def status(self) -> StatusFeed:
        """The status feed; raises StoreUnavailable if the store cannot be read."""
        figures = await self._figures.get()
        now = self._clock()
        receivers = self._broker.receivers()
        # Topics by name; a pattern receiver counts towards each topic it matches.
        named = {s.spec.topic for s in receivers if not is_pattern(s.spec.topic)}
        backlogs = {b.topic: b for b in figures.backlogs}
        self._forget_idle_topics(now, named)
        topics = []
        for name in sorted(set(backlogs) | named | set(self._topics)):
            backlog = backlogs.get(name)
            activity = self._topics.get(name)
            topics.append(
                TopicStatus(
                    topic=name,
                    receivers=sum(1 for s in receivers if topic_matches(s.spec.topic, name)),
                    backlog=backlog.messages if backlog else 0,
                    oldest_undelivered_age_seconds=(
                        _age(now, backlog.oldest_published_at) if backlog else None
                    ),
                    publish_rate=_rate(now, activity.published) if activity else 0.0,
                    delivery_rate=_rate(now, activity.delivered) if activity else 0.0,
                )
            )
        return StatusFeed(
            at=now,
            node=self._store.node,
            readers=figures.stats.receivers,
            writers=figures.stats.senders,
            queue_length=figures.stats.queue_length,
            completed_sends=figures.stats.completed,
            dead_letters=figures.dead_letters,
            topics=topics,
            receivers=[self._receiver_status(s) for s in receivers],
            throughput=self._throughput.series(now),
            nodes=_node_statuses(figures.nodes, self._store.clock()),
        )

    def topic_rates(self, name: str) -> tuple[float, float]:
        """`name`'s publishes and deliveries per second over the last minute, as this
        process (or its group) counted them (memory only, never the store)."""
        activity = self._topics.get(name)
        if activity is None:
            return 0.0, 0.0
        now = self._clock()
        return _rate(now, activity.published), _rate(now, activity.delivered)

    def _receiver_status(self, subscription: Subscription) -> ReceiverStatus:
        activity = self._receivers.get(subscription.id) or ReceiverActivity()
        return ReceiverStatus(
            id=subscription.id,
            kind=_kind(subscription),
            url=subscription.spec.url,
            topic=subscription.spec.topic,
            group=subscription.spec.group,
            format=None if subscription.spec.is_pull else subscription.spec.format.value,
            state=self._state(subscription),
            in_flight=activity.in_flight,
            window=activity.window,
            last_success_at=activity.last_success_at,
            consecutive_failures=activity.consecutive_failures,
            recent_failures=list(reversed(activity.recent_failures)),
            disabled_reason=None if subscription.disabled is None else subscription.disabled.reason,
        )

    def _gauges(self) -> Gauges:
        """For the scrape-time collector: memory only, never the store."""
        now = self._clock()
        receivers = self._broker.receivers()
        named = {s.spec.topic for s in receivers if not is_pattern(s.spec.topic)}
        self._forget_idle_topics(now, named)
        states = Counter(self._state(s) for s in receivers)
        topics = None
        if self._scraped is not None:
            figures = {
                b.topic: TopicFigures(b.topic, b.messages, _age(now, b.oldest_published_at))
                for b in self._scraped.backlogs
            }
            for name in named:  # a topic with receivers shows its zeros too
                figures.setdefault(name, TopicFigures(name, 0, 0.0))
            topics = sorted(figures.values(), key=lambda figure: figure.topic)
        return Gauges(
            topics=topics,
            dead_letters=None if self._scraped is None else self._scraped.dead_letters,
            receivers=dict(states),
        )

    def _state(self, subscription: Subscription) -> ReceiverState:
        # A pause (an operator's) or a disable (the broker's) says why nothing is
        # delivered, whatever the last attempts did.
        if subscription.disabled is not None:
            return ReceiverState.DISABLED
        if subscription.paused:
            return ReceiverState.PAUSED
        activity = self._receivers.get(subscription.id)
        return ReceiverState.HEALTHY if activity is None else activity.state

    def _topic(self, name: str) -> TopicActivity:
        activity = self._topics.get(name)
        if activity is None:
            activity = self._topics[name] = TopicActivity()
        return activity

    def _forget_idle_topics(self, now: float, keep: set[str]) -> None:
        """Topics come and go; keep memory bounded by what was active lately."""
        for name in [n for n, a in self._topics.items() if n not in keep and a.idle(now)]:
            del self._topics[name]


def _node_statuses(nodes: list[NodeInfo], now: float) -> list[NodeStatus]:
    """`now` by the store's clock, the one the nodes' heartbeats are written by."""
    return [
        NodeStatus(
            name=node.name,
            address=node.address,
            started_at=node.started_at,
            seen_at=node.seen_at,
            uptime_seconds=_age(now, node.started_at),
            seen_age_seconds=_age(now, node.seen_at),
            held=node.held,
            in_flight=node.in_flight,
        )
        for node in sorted(nodes, key=lambda node: node.name)
    ]


def _age(now: float, since: float) -> float:
    return round(max(0.0, now - since), 3)


def _rate(now: float, counts: SecondCounts) -> float:
    return round(counts.per_second(now, RATE_SECONDS), 3)


def _kind(subscription: Subscription) -> ReceiverKind:
    if subscription.connection_id is not None:
        return "seed"
    return "pull" if subscription.spec.is_pull else "push"
