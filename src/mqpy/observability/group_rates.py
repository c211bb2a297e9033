"""The dashboard's rates for a `--processes` group: what every process counted.

Each process of a group writes its counters to the directory the group shares
(prometheus_client's multiprocess mode, metrics.py). Once a second a process reads the
group's totals from there and counts what they grew by in its per-second counts, so
the throughput chart and the topic rates any process shows are the group's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from mqpy.observability.group_collector import GroupCollector
from mqpy.observability.rates import Throughput, TopicActivity

SAMPLE_SECONDS = 1.0
_FAILED = ("retried", "dead_lettered")


@dataclass(slots=True)
class GroupTotals:
    """Counts since the group started, over every process, alive or not."""

    published: dict[str, float] = field(default_factory=dict)  # by topic
    delivered: dict[str, float] = field(default_factory=dict)  # by the message's topic
    failed: float = 0.0  # attempts retried or dead-lettered


def read_totals(path: str) -> GroupTotals:
    """The group's totals from its metrics directory (reads every process's files)."""
    totals = GroupTotals()
    for family in GroupCollector(path).collect():
        for sample in family.samples:
            if sample.name == "mqpy_messages_published_total":
                totals.published[sample.labels["topic"]] = sample.value
            elif sample.name == "mqpy_messages_delivered_total":
                totals.delivered[sample.labels["topic"]] = sample.value
            elif sample.name == "mqpy_deliveries_total" and sample.labels["outcome"] in _FAILED:
                totals.failed += sample.value
    return totals


class GroupRates:
    """Counts the group's growth, second by second, into one process's rates."""

    def __init__(
        self,
        path: str,
        throughput: Throughput,
        topic: Callable[[str], TopicActivity],
        clock: Callable[[], float],
    ) -> None:
        self._path = path
        self._throughput = throughput
        self._topic = topic
        self._clock = clock
        self._last: GroupTotals | None = None

    async def start(self) -> None:
        """Take the first sample, where counting starts: before the process listens,
        or what it is sent before its first sample would never be charted."""
        self.record(await asyncio.to_thread(read_totals, self._path), self._clock())

    async def run(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_SECONDS)
            totals = await asyncio.to_thread(read_totals, self._path)
            self.record(totals, self._clock())

    def record(self, totals: GroupTotals, now: float) -> None:
        """Count what grew since the last sample as happening now. The first sample
        only sets where counting starts: what came before is not this second's."""
        last, self._last = self._last, totals
        if last is None:
            return
        for name, count in totals.published.items():
            grew = int(count - last.published.get(name, 0.0))
            if grew > 0:
                self._throughput.published.add(now, grew)
                self._topic(name).published.add(now, grew)
        for name, count in totals.delivered.items():
            grew = int(count - last.delivered.get(name, 0.0))
            if grew > 0:
                self._throughput.delivered.add(now, grew)
                self._topic(name).delivered.add(now, grew)
        failed = int(totals.failed - last.failed)
        if failed > 0:
            self._throughput.failed.add(now, failed)
