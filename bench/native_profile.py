"""`--profile-native`: where a broker's CPU goes, by library, sampled with Linux perf.

py-spy (`--profile`) sees Python frames only: it charges the C code a frame calls
(SQLite's statements, the kernel's socket and file work) to that frame, so a profile
of Python functions cannot say how much of a delivery is the interpreter's own work
and how much is SQLite's or the kernel's. perf samples every instruction, whoever runs
it, and names the library (the "DSO") it belongs to; that split is what decides which
levers can move a figure. It works the same on a broker that is not Python (the
`--compare` one), which puts both brokers' costs side by side.

`perf record` runs on the broker and every process below it for the measured stretch;
`perf report --sort dso` gives each library's share of the samples, grouped here into a
few parts (`PARTS`). A library outside them is shown by its own name when it has at
least 1% of the samples, the rest as "other".
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from bench.cpu import process_tree

# Parts of the CPU, each named by the libraries (file name prefixes) that make it up.
PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Python interpreter", ("libpython", "python3")),
    ("kernel", ("[kernel",)),
    ("SQLite", ("libsqlite3",)),
    ("C library", ("libc.so", "libm.so", "ld-linux")),
    ("uvloop", ("loop.cpython",)),
    ("httptools", ("parser.cpython", "url_parser.cpython")),
    (
        "aiohttp's C parts",
        ("_multidict", "_http_parser", "_http_writer", "_quoting_c", "_frozenlist"),
    ),
    ("OpenSSL", ("libcrypto", "libssl", "_hashlib.cpython", "_ssl.cpython")),
)
SAMPLES_PER_SECOND = 999  # odd, so it does not beat in step with a timer of the broker
_SHARE_LINE = re.compile(r"^\s*([\d.]+)%\s+(\S.*?)\s*$")


class NativeProfiler:
    """Runs `perf record` on a broker during each measured stretch, and keeps each
    stretch's CPU shares by part (`shares[name]`: one dict per run, percent)."""

    def __init__(self, workdir: Path, broker: str) -> None:
        self.workdir = workdir
        self.broker = broker  # names its data files apart from the other broker's
        self.shares: dict[str, list[dict[str, float]]] = {}
        self.perf = shutil.which("perf") or "perf"

    @contextlib.contextmanager
    def record(self, pid: int, name: str) -> Iterator[None]:
        run = len(self.shares.get(name, []))
        data = self.workdir / f"{self.broker}-{name}-{run}.perf.data"
        pids = ",".join(str(p) for p in process_tree(pid))
        command = [self.perf, "record", "--quiet", "-F", str(SAMPLES_PER_SECOND)]
        command += ["-p", pids, "-o", str(data)]
        perf = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.3)  # let it attach
        try:
            yield
        finally:
            perf.send_signal(signal.SIGINT)  # perf writes its data file on SIGINT
            try:
                _, errors = perf.communicate(timeout=60.0)
            except subprocess.TimeoutExpired:
                perf.kill()
                _, errors = perf.communicate(timeout=10.0)
            self._read(name, data, errors.decode(errors="replace"))

    def _read(self, name: str, data: Path, record_errors: str) -> None:
        report = subprocess.run(
            [self.perf, "report", "-i", str(data), "--sort", "dso", "--stdio"],
            capture_output=True,
            text=True,
            check=False,
        )
        shares = by_part(report.stdout)
        if not shares:
            problem = (report.stderr or record_errors).strip().splitlines()
            print(
                f"  perf on {name}: {problem[-1] if problem else 'nothing recorded'}",
                file=sys.stderr,
            )
            return
        self.shares.setdefault(name, []).append(shares)

    def mean_shares(self, name: str) -> dict[str, float] | None:
        """Each part's share of the runs of `name`, averaged; None if none recorded."""
        runs = self.shares.get(name)
        if not runs:
            return None
        parts = {part for run in runs for part in run}
        mean = {part: sum(run.get(part, 0.0) for run in runs) / len(runs) for part in parts}
        return dict(sorted(mean.items(), key=lambda item: -item[1]))


def require_perf() -> None:
    """Stop the run before it starts if there is no perf to run."""
    if shutil.which("perf") is None:
        raise SystemExit("--profile-native needs Linux perf: apt-get install linux-perf (Debian)")


def by_part(report: str) -> dict[str, float]:
    """`perf report --sort dso --stdio` as percent per part (`PARTS`)."""
    shares: dict[str, float] = {}
    for line in report.splitlines():
        if line.startswith("#"):
            continue
        match = _SHARE_LINE.match(line)
        if match is None:
            continue
        share, library = float(match.group(1)), match.group(2)
        part = next(
            (part for part, prefixes in PARTS if library.startswith(prefixes)),
            library if share >= 1.0 else "other",
        )
        shares[part] = shares.get(part, 0.0) + share
    return shares


def describe(shares: dict[str, float], per_item_us: float | None) -> str:
    """ "Python interpreter 48% (44 µs), kernel 24% (22 µs), ...": each part's share,
    and its microseconds of server CPU per item when that is known."""
    words = []
    for part, share in shares.items():
        if share < 0.5:
            continue
        us = "" if per_item_us is None else f" ({share / 100 * per_item_us:,.0f} µs)"
        words.append(f"{part} {share:.0f}%{us}")
    return ", ".join(words)
