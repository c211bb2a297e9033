"""Reading a `--processes` group's metrics directory while its processes write to it.

prometheus_client's `MultiProcessCollector` reads every `*.db` file there. A process
creates its file empty and only then sizes it, so a read that comes in between finds
an empty file, and the collector fails on it (`struct.error`): a process starting
beside one that reads would take down a scrape, or the reader's own start. An empty
file holds no value yet, so skipping it loses nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector


class GroupCollector(MultiProcessCollector):
    """Every process's values from the group's directory, skipping files still being
    created."""

    def __init__(self, path: str) -> None:
        super().__init__(None, path=path)  # type: ignore[no-untyped-call]
        self._directory = Path(path)

    def collect(self) -> Iterable[Metric]:
        files = [str(file) for file in self._directory.glob("*.db") if _has_values(file)]
        return self.merge(files, accumulate=True)  # type: ignore[no-any-return,no-untyped-call]


def _has_values(file: Path) -> bool:
    try:
        return os.stat(file).st_size > 0
    except FileNotFoundError:  # a dead process's live gauges, removed meanwhile
        return False
