"""`mqpy serve --processes N`: N broker processes on one machine, one port, one store.

The parent serves nothing itself. It runs its own command line again once per process,
with `MQPY_PROCESS_SLOT` saying which process each child is; a child is then a full
node (its own store connections, dispatcher and heartbeat), just as if started by
hand, that binds the shared port with SO_REUSEPORT so the kernel spreads connections
among them. Given port 0, the parent picks the port once: it binds port 0 itself with
SO_REUSEPORT, without listening (so the kernel hands it no connection), and holds that
socket while the children bind the port it got, passed to them as a last `--port`.

On SQLite the parent first takes the data directory's lock for the whole group and
releases what the processes before it left claimed, then hands each child the lock's
descriptor (`MQPY_DATA_LOCK_FD`).

For /metrics to show the whole group whichever process answers, the parent makes a
directory for prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR), tells
the library when a child is gone (so gauges of live processes drop its share), and
removes the directory once every child has stopped (or, if it was killed, the next
group started removes it). In the same way it makes the small file in which the group
keeps its publish rate, receivers' paces and receivers' pauses together
(core/group_state.py, MQPY_GROUP_STATE), which each child maps into its memory.

The parent forwards SIGTERM and SIGINT to the children and waits for their graceful
stop. A child that dies is replaced, after a pause that grows while replacements keep
failing to start, so a crash loop does not spin; a first child that cannot start (a
refused setting, an unreachable store, a busy port) stops them all with its status.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO

from prometheus_client.multiprocess import mark_process_dead

from mqpy.config import Settings
from mqpy.core import group_state
from mqpy.core.group_state import GroupState, process_alive
from mqpy.model.errors import StoreCannotOpen, StoreError
from mqpy.runtime.stopping import stop_timeout
from mqpy.store import StoreLocation
from mqpy.store.sqlite import prepare_group

log = logging.getLogger("mqpy.supervisor")

# Set in each child's environment: which of the N processes it is, 1 to N.
SLOT_ENV = "MQPY_PROCESS_SLOT"
# And on SQLite, the descriptor of the data directory's lock, which the parent holds.
DATA_LOCK_ENV = "MQPY_DATA_LOCK_FD"
# And the directory the group's metrics are shared in: prometheus_client's own name.
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Its name, in the temporary directory: this, the supervisor's pid, "-", a random tail.
METRICS_DIR_PREFIX = "mqpy-metrics-"
# A child that exits sooner than this after its start failed to start.
STARTUP_SECONDS = 5.0
# The pause before a replacement: doubled for each start in a row that failed.
FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 10.0
# One process failing to start this many times in a row stops them all.
MAX_FAILED_STARTS = 5
POLL_SECONDS = 0.1
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def process_slot(environ: Mapping[str, str] | None = None) -> int | None:
    """Which process of a `--processes N` group this one is, or None if it is the
    first (and maybe only) process a user started."""
    raw = (os.environ if environ is None else environ).get(SLOT_ENV, "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else None


def inherited_data_lock(environ: Mapping[str, str] | None = None) -> int | None:
    """The descriptor of the SQLite data directory's lock this process's supervisor
    handed down, or None if it is not one of a group on SQLite."""
    environ = os.environ if environ is None else environ
    raw = environ.get(DATA_LOCK_ENV, "")
    return int(raw) if process_slot(environ) is not None and raw.isdigit() else None


def remove_orphaned_metrics(parent: str | None = None) -> None:
    """Remove the metrics directories of groups whose supervisor is gone: one killed
    (SIGKILL) could not remove its own. A directory is named after its supervisor's pid."""
    for path in Path(parent or tempfile.gettempdir()).glob(f"{METRICS_DIR_PREFIX}*-*"):
        pid = path.name[len(METRICS_DIR_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def group_metrics_dir(environ: Mapping[str, str] | None = None) -> str | None:
    """The directory this process's group shares its metrics in, or None if it is not
    one of a group."""
    environ = os.environ if environ is None else environ
    raw = environ.get(METRICS_DIR_ENV, "")
    return raw if process_slot(environ) is not None and raw else None


def refusal(settings: Settings) -> str | None:
    """Why these settings cannot run `--processes` above 1, or None if they can."""
    try:
        StoreLocation.parse(settings.store, settings.data_dir)
    except StoreCannotOpen as exc:
        return str(exc)
    return None


def hold_port(host: str, port: int) -> tuple[int, list[socket.socket]]:
    """The port the children are to share, and the sockets that keep it: bound with
    SO_REUSEPORT on each of `host`'s addresses but not listening, so no connection waits
    on them. For port 0 the kernel picks it. A fixed port must be free first: SO_REUSEPORT
    would let this group bind beside another (of the same user) that serves it, and the
    two would split its connections; once held, it refuses the next group that probes."""
    if port != 0:
        _refuse_taken(host, port)
    held: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in socket.getaddrinfo(
            host or None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        ):
            sock = socket.socket(family, kind, proto)
            held.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:  # as asyncio binds it: v6 only, v4 apart
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            # Every address on the port the first one got.
            sock.bind((address[0], port, *address[2:]))
            port = int(sock.getsockname()[1])
    except OSError:
        for sock in held:
            sock.close()
        raise
    return port, held


def _refuse_taken(host: str, port: int) -> None:
    """OSError (EADDRINUSE) if a socket holds `port` on one of `host`'s addresses: a bind
    without SO_REUSEPORT fails beside any, as one process's listen would."""
    for family, kind, proto, _, address in socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    ):
        with socket.socket(family, kind, proto) as probe:
            # As asyncio binds: a port whose old connections wait out TIME_WAIT is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            probe.bind(address)


def supervise(settings: Settings, argv: Sequence[str]) -> int:
    """Run `mqpy <argv>` as `settings.process_count` children until SIGTERM or SIGINT; the
    exit status: 0 after a clean stop, 2 for settings that cannot run several
    processes, else the status of the children that kept failing."""
    reason = refusal(settings)
    if reason is not None:
        log.error("%s", reason)
        return 2
    location = StoreLocation.parse(settings.store, settings.data_dir)
    environ = dict(os.environ)
    data_lock: IO[str] | None = None
    if location.backend == "sqlite":
        try:
            data_lock = prepare_group(Path(location.target))
        except StoreError as exc:
            log.error("%s", exc)
            return 1
        environ[DATA_LOCK_ENV] = str(data_lock.fileno())
    try:
        port, held = hold_port(settings.host, settings.port)
    except OSError as exc:
        if settings.port:  # the words a single process's failed listen uses
            log.error("cannot listen on %s:%d: %s", settings.host, settings.port, exc.strerror)
        else:
            log.error("cannot pick a port on %s: %s", settings.host, exc.strerror)
        if data_lock is not None:
            data_lock.close()
        return 1
    log.info("starting %d processes on %s:%d", settings.process_count, settings.host, port)
    # The last --port wins: every child takes the one port picked here.
    count = str(settings.process_count)
    command = [sys.executable, "-m", "mqpy", *argv, "--port", str(port), "--processes", count]
    # Fresh for each group: files left by an earlier one would add to its counters.
    remove_orphaned_metrics()
    environ[METRICS_DIR_ENV] = tempfile.mkdtemp(prefix=f"{METRICS_DIR_PREFIX}{os.getpid()}-")
    log.info("metrics of the group in %s=%s", METRICS_DIR_ENV, environ[METRICS_DIR_ENV])
    group_state.remove_orphans()
    shared = GroupState.create()
    environ[group_state.ENV] = str(shared)
    log.info("limits of the group in %s=%s", group_state.ENV, shared)
    try:
        return Supervisor(
            command, settings.process_count, stop_timeout(settings.shutdown_grace), environ
        ).run()
    finally:
        shared.unlink(missing_ok=True)
        shutil.rmtree(environ[METRICS_DIR_ENV], ignore_errors=True)
        for sock in held:
            sock.close()
        if data_lock is not None:
            data_lock.close()


@dataclass
class _Child:
    slot: int
    process: subprocess.Popen[bytes]
    started: float
    first: bool  # started with the group, not as a replacement


class Supervisor:
    """Keeps `count` copies of `command` running until told to stop."""

    def __init__(
        self,
        command: Sequence[str],
        count: int,
        stop_timeout: float,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.command = list(command)
        self.count = count
        self.stop_timeout = stop_timeout
        self.environ = dict(os.environ if environ is None else environ)
        self.children: dict[int, _Child] = {}
        self.failed_starts = dict.fromkeys(range(1, count + 1), 0)
        self.restart_at: dict[int, float] = {}
        self.stop_signal: int | None = None

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _STOP_SIGNALS}
        try:
            for slot in range(1, self.count + 1):
                self._start(slot, first=True)
            gave_up = self._watch()
            clean = self._stop()
            if gave_up is not None:
                return gave_up
            log.info("stopped")
            return 0 if clean else 1
        finally:
            if self.children:  # something went wrong above: leave no child behind
                self._stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stop_signal is None:
            self.stop_signal = signum
            return
        # A second signal: every node stops at once, giving back what is in flight.
        for child in list(self.children.values()):
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signum)

    def _watch(self) -> int | None:
        """Keep every process running until a stop signal (None), or until they keep
        failing to start (the exit status to give up with)."""
        while self.stop_signal is None:
            for child in list(self.children.values()):
                returncode = child.process.poll()
                if returncode is not None:
                    gave_up = self._exited(child, returncode)
                    if gave_up is not None:
                        return gave_up
            now = time.monotonic()
            for slot, due in list(self.restart_at.items()):
                if now >= due and self.stop_signal is None:
                    del self.restart_at[slot]
                    self._start(slot, first=False)
            time.sleep(POLL_SECONDS)
        log.info(
            "%s: stopping %d processes", signal.Signals(self.stop_signal).name, len(self.children)
        )
        return None

    def _exited(self, child: _Child, returncode: int) -> int | None:
        """Schedule a replacement for a child that exited; the status to give up with
        instead, if it should not be replaced."""
        self._forget(child)
        lived = time.monotonic() - child.started
        failed_start = lived < STARTUP_SECONDS
        name = f"process {child.slot}/{self.count} (pid {child.process.pid})"
        how = _how(returncode)
        # A first process, or any with a refused setting (2), that exits with a status
        # at once will do so again: the settings are the same for every start.
        if failed_start and returncode > 0 and (child.first or returncode == 2):
            log.error("%s %s at startup; stopping the others", name, how)
            return returncode
        self.failed_starts[child.slot] = self.failed_starts[child.slot] + 1 if failed_start else 0
        failures = self.failed_starts[child.slot]
        if failures >= MAX_FAILED_STARTS:
            log.error(
                "%s %s: %d starts in a row failed within %gs; stopping the others",
                name,
                how,
                failures,
                STARTUP_SECONDS,
            )
            return returncode if returncode > 0 else 1
        delay = min(MAX_BACKOFF_SECONDS, FIRST_BACKOFF_SECONDS * 2**failures)
        log.warning("%s %s after %.1fs; starting another in %gs", name, how, lived, delay)
        self.restart_at[child.slot] = time.monotonic() + delay
        return None

    def _start(self, slot: int, *, first: bool) -> None:
        lock = self.environ.get(DATA_LOCK_ENV, "")
        process = subprocess.Popen(
            self.command,
            env={**self.environ, SLOT_ENV: str(slot)},
            pass_fds=(int(lock),) if lock.isdigit() else (),
            stdin=subprocess.DEVNULL,
            # Out of the terminal's process group: Ctrl-C reaches the supervisor only,
            # which passes it on once.
            process_group=0,
            preexec_fn=_parent_death_signal(),
        )
        self.children[slot] = _Child(slot, process, time.monotonic(), first)
        log.info("process %d/%d started (pid %d)", slot, self.count, process.pid)

    def _forget(self, child: _Child) -> None:
        """A child exited: its counters stay in the group's totals, its live gauges go."""
        del self.children[child.slot]
        metrics = self.environ.get(METRICS_DIR_ENV)
        if metrics:
            mark_process_dead(child.process.pid, metrics)  # type: ignore[no-untyped-call]

    def _stop(self) -> bool:
        """Pass the stop signal (SIGTERM if none came) on to every child and wait for
        them, killing any still running after `stop_timeout`; whether all stopped cleanly."""
        sent = self.stop_signal or signal.SIGTERM
        self.restart_at.clear()
        for child in self.children.values():
            child.process.send_signal(sent)
        deadline = time.monotonic() + self.stop_timeout
        clean = True
        while self.children:
            for child in list(self.children.values()):
                returncode = child.process.poll()
                if returncode is None:
                    continue
                self._forget(child)
                # One signalled before it could catch the signal dies of it: no harm.
                if returncode not in (0, -sent):
                    clean = False
                    log.warning(
                        "process %d/%d (pid %d) %s while stopping",
                        child.slot,
                        self.count,
                        child.process.pid,
                        _how(returncode),
                    )
            if self.children and time.monotonic() > deadline:
                for child in self.children.values():
                    log.error(
                        "process %d/%d (pid %d) did not stop within %gs; killing it",
                        child.slot,
                        self.count,
                        child.process.pid,
                        self.stop_timeout,
                    )
                    child.process.kill()
                    child.process.wait()
                self.children.clear()
                return False
            time.sleep(POLL_SECONDS)
        return clean


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _how(returncode: int) -> str:
    if returncode < 0:
        return f"was killed by {signal.Signals(-returncode).name}"
    return f"exited with status {returncode}"


def _parent_death_signal() -> Callable[[], None] | None:
    """On Linux, arrange for a child to get SIGTERM when the supervisor dies, even by
    SIGKILL, so that no node goes on serving the port unsupervised."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    supervisor = os.getpid()

    def arm() -> None:  # runs in the child between fork and exec
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
        if os.getppid() != supervisor:  # it died before the signal was armed
            os._exit(1)

    return arm
