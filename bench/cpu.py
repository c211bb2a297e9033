"""CPU accounting from /proc: how busy each of our processes and the whole machine were.

Figures on a shared two-core machine mean little without knowing whether something
else was running; these readings say so, in cores (1.0 = one core busy throughout).

What a name measures is a watch:

- a process id (`1234`): that process and every process below it, so a broker run
  with `--processes N` counts its supervisor and all N nodes;
- `comm:NAME` (`comm:postgres`): every process on the machine whose command name is
  NAME, for a PostgreSQL server that is not ours to start (every cluster on the
  machine counts then).

Each process is read separately and keyed by its id and start time, so a process that
starts during the stretch counts from its start, and one that ends during it counts
for nothing (its last readings are gone with it): a small undercount, never a
negative one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MACHINE = "machine"
# The length of the stretch the readings cover, in usage() next to the cores.
SECONDS = "seconds"
COMM_PREFIX = "comm:"

Watch = int | str  # a process id (with its descendants) or "comm:NAME"


@dataclass(frozen=True)
class _Process:
    pid: int
    ppid: int
    comm: str
    started: int  # clock ticks after boot: with pid, tells a reused pid apart
    seconds: float  # user + system, all its threads


def _read_process(stat_file: Path) -> _Process | None:
    try:
        text = stat_file.read_text()
    except OSError:  # gone between the listing and the read
        return None
    comm = text[text.find("(") + 1 : text.rfind(")")]
    fields = text.rsplit(")", 1)[1].split()
    return _Process(
        pid=int(stat_file.parent.name),
        ppid=int(fields[1]),
        comm=comm,
        started=int(fields[19]),
        seconds=(int(fields[11]) + int(fields[12])) / CLOCK_TICKS,
    )


def all_processes() -> list[_Process]:
    found = (_read_process(stat) for stat in Path("/proc").glob("[0-9]*/stat"))
    return [process for process in found if process is not None]


def machine_seconds() -> float:
    """CPU seconds spent busy by every core since boot."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0]
    except OSError:
        return 0.0
    values = [int(v) for v in first.split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return (sum(values[:8]) - idle) / CLOCK_TICKS


def parse_watch(text: str) -> Watch:
    """A watch as given on a command line: digits are a process id."""
    return int(text) if text.isdigit() else text


def _watched(watch: Watch, processes: list[_Process]) -> list[_Process]:
    if isinstance(watch, str):
        if not watch.startswith(COMM_PREFIX):
            raise ValueError(f"a watch is a process id or {COMM_PREFIX}NAME, not {watch!r}")
        name = watch.removeprefix(COMM_PREFIX)
        return [process for process in processes if process.comm == name]
    children: dict[int, list[_Process]] = {}
    for process in processes:
        children.setdefault(process.ppid, []).append(process)
    tree = [process for process in processes if process.pid == watch]
    for process in tree:  # grows while it is walked: breadth first
        tree.extend(children.get(process.pid, []))
    return tree


def process_tree(pid: int) -> list[int]:
    """`pid` and every process below it now, parents first."""
    return [process.pid for process in _watched(pid, all_processes())]


Reading = dict[tuple[int, int], float]


class Meter:
    """Cores used by named watches and by the machine between start() and usage()."""

    def __init__(self, watches: Mapping[str, Watch]) -> None:
        self._watches = dict(watches)
        self._started = 0.0
        self._before: dict[str, Reading] = {}
        self._machine_before = 0.0

    def _read(self) -> dict[str, Reading]:
        processes = all_processes()
        return {
            name: {(p.pid, p.started): p.seconds for p in _watched(watch, processes)}
            for name, watch in self._watches.items()
        }

    def start(self) -> Meter:
        self._started = time.monotonic()
        self._machine_before = machine_seconds()
        self._before = self._read()
        return self

    def usage(self) -> dict[str, float]:
        """Cores per name and for the whole machine, and the stretch's `seconds`."""
        after = self._read()
        machine = machine_seconds()
        wall = max(time.monotonic() - self._started, 1e-9)
        usage = {}
        for name, reading in after.items():
            before = self._before.get(name, {})
            used = sum(seconds - before.get(key, 0.0) for key, seconds in reading.items())
            usage[name] = max(0.0, used) / wall
        usage[MACHINE] = (machine - self._machine_before) / wall
        usage[SECONDS] = wall
        return usage
