"""CPU accounting from /proc: how busy each of our processes and the whole machine were.

Figures on a shared two-core machine mean little without knowing whether something
else was running; these readings say so, in cores (1.0 = one core busy throughout).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MACHINE = "machine"


def process_seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by process `pid`, all its threads."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_seconds() -> float:
    """CPU seconds spent busy by every core since boot."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0]
    except OSError:
        return 0.0
    values = [int(v) for v in first.split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return (sum(values[:8]) - idle) / CLOCK_TICKS


class Meter:
    """Cores used by named processes and by the machine between start() and usage()."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self._pids = dict(pids)
        self._started = 0.0
        self._before: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        readings = {name: process_seconds(pid) for name, pid in self._pids.items()}
        readings[MACHINE] = machine_seconds()
        return readings

    def start(self) -> Meter:
        self._started = time.monotonic()
        self._before = self._read()
        return self

    def usage(self) -> dict[str, float]:
        after = self._read()
        wall = max(time.monotonic() - self._started, 1e-9)
        return {name: (after[name] - self._before[name]) / wall for name in after}
