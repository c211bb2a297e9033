"""The store's figures for operators, read at most once a second.

Every scrape, status request and dashboard poll of the same second shares one read, so
watching the broker costs the store the same whether one person looks or fifty.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from mqpy.model.domain import BrokerStats, NodeInfo
from mqpy.store import Store
from mqpy.store.base import TopicBacklog

MAX_AGE_SECONDS = 1.0
# A node is live while its last heartbeat is at most this old: five missed heartbeats
# (a node beats every 2 s, mqpy.core.peers.HEARTBEAT_SECONDS). A busy node or a slow store
# write is not taken for a dead one, and a node that did die drops off within ~10 s.
LIVE_NODE_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class StoreFigures:
    stats: BrokerStats
    backlogs: list[TopicBacklog]
    dead_letters: int
    nodes: list[NodeInfo]  # live ones (see LIVE_NODE_SECONDS), by name


class StoreFiguresCache:
    """Reads the store's figures when the last read is older than `max_age`."""

    def __init__(
        self,
        store: Store,
        max_age: float = MAX_AGE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._max_age = max_age
        self._clock = clock
        self._lock = asyncio.Lock()
        self._figures: StoreFigures | None = None
        self._read_at = 0.0

    async def get(self) -> StoreFigures:
        """Fresh figures; raises StoreUnavailable if the store cannot be read."""
        async with self._lock:  # callers arriving during a read wait for its result
            if self._figures is None or self._clock() - self._read_at >= self._max_age:
                seen_since = self._store.clock() - LIVE_NODE_SECONDS
                stats, backlogs, dead_letters, nodes = await asyncio.gather(
                    self._store.stats(),
                    self._store.topic_backlogs(),
                    self._store.dead_letter_count(),
                    self._store.nodes(seen_since=seen_since),
                )
                self._figures = StoreFigures(stats, backlogs, dead_letters, nodes)
                self._read_at = self._clock()
            return self._figures
