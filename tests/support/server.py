"""Run the real `mqpy serve` as a child process on an ephemeral port."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from tests.support.launcher import LaunchedProcess, start_mqpy

_LISTENING = re.compile(r"listening on (https?://[^\s\"]+)")

# Set by tests/conftest.py for each test: whether it is marked one_process (it checks
# what a group does differently, on purpose), so its servers ignore MQPY_TEST_PROCESSES.
one_process_test = False


def _children(pid: int) -> list[int]:
    """The pids of `pid`'s children (Linux: /proc/PID/task/*/children)."""
    found: list[int] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found += [int(child) for child in children.read_text().split()]
    return found


class ServerProcess:
    """A broker process: start, kill, restart on the same data directory (or on the
    store its `--store` argument or MQPY_STORE names)."""

    def __init__(self, data_dir: Path, args: Sequence[str] = (), env: dict[str, str] | None = None):
        self.data_dir = data_dir
        self.args = list(args)
        self.env = env or {}
        self.url = ""
        self.port = 0
        self.lines: list[str] = []
        self._process: subprocess.Popen[str] | LaunchedProcess | None = None
        self._reader: threading.Thread | None = None
        self._harness_group: int | None = None  # fixed at the first start, for restarts
        self._harness_made_group = False
        self._listening_wanted = 1  # processes that must listen before a start is done

    def start(self, timeout: float = 20.0) -> ServerProcess:
        port_args = ["--port", str(self.port)] if self.port else ["--port", "0"]
        args = ["serve", *self._data_dir_args(), *port_args, *self._processes_args(), *self.args]
        self.url = ""  # until this start says where it listens
        # A group the harness made is started once every process listens: a test that
        # then breaks the store (a read-only database, a full disk) must not catch one
        # still opening it, which the supervisor takes for a setting that cannot run
        # and stops the group for (seen in `make test-group`).
        self._listening_wanted = self.group_size if self._harness_made_group else 1
        self._process = start_mqpy(args, {**os.environ, **self.env})
        started = threading.Event()
        self._reader = threading.Thread(target=self._read, args=(started,), daemon=True)
        self._reader.start()
        if not started.wait(timeout) or not self.url:
            self.kill()
            raise RuntimeError("mqpy did not start:\n" + self.log)
        return self

    def _processes_args(self) -> list[str]:
        # One broker process, not the default one per core: most tests are about what a
        # broker does, and a supervisor with its children would triple the processes
        # the suite starts. Tests of a group give --processes (or MQPY_PROCESSES), which
        # wins; test_processes.py and test_serve_defaults.py run the default.
        # MQPY_TEST_PROCESSES=N (`make test-group`) starts the others as a group of N,
        # what users run, except in tests marked one_process.
        flags = {arg.split("=", 1)[0] for arg in self.args}
        if self.env.get("MQPY_PROCESSES") or flags & {"--processes", "-processes"}:
            return []
        self._harness_made_group = self.group_size > 1
        return ["--processes", str(self.group_size)]

    @property
    def group_size(self) -> int:
        """How many processes the harness starts this server with when its test gives
        none: 1, or MQPY_TEST_PROCESSES outside tests marked one_process."""
        if self._harness_group is None:
            size = os.environ.get("MQPY_TEST_PROCESSES", "")
            self._harness_group = 1 if one_process_test else int(size or 1)
        return self._harness_group

    def _data_dir_args(self) -> list[str]:
        # A server given a store of its own gets no --data-dir: the two would name
        # different stores, which mqpy refuses.
        flags = {arg.split("=", 1)[0] for arg in self.args}
        if flags & {"--store", "-store"} or self.env.get("MQPY_STORE"):
            return []
        return ["--data-dir", str(self.data_dir)]

    def _read(self, started: threading.Event) -> None:
        assert self._process is not None and self._process.stderr is not None
        listening = 0
        for line in self._process.stderr:
            self.lines.append(line)
            match = _LISTENING.search(line)
            if match and not started.is_set():
                self.url = match.group(1)
                self.port = int(self.url.rsplit(":", 1)[1])
                listening += 1
                if listening >= self._listening_wanted:
                    started.set()
        started.set()  # it exited: a start that never came need not be waited for

    @property
    def log(self) -> str:
        return "".join(self.lines)

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    @property
    def parent_pid(self) -> int:
        """Whose child the broker is: this test process's, or the fork server's
        (tests/support/launcher.py)."""
        assert self._process is not None
        if isinstance(self._process, LaunchedProcess):
            return self._process.parent_pid
        return os.getpid()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def kill(self) -> None:
        """SIGKILL: the crash case, nothing gets to clean up. A group the harness made
        (MQPY_TEST_PROCESSES) crashes whole: a SIGKILLed supervisor alone would have its
        children stopped by SIGTERM, cleanly, and the test would check a clean stop."""
        if self._process is not None and self._process.poll() is None:
            if self._harness_made_group:
                self._kill_children()
            self._process.send_signal(signal.SIGKILL)
        self._wait()

    def _kill_children(self) -> None:
        # Stopped first, so the supervisor neither restarts a child nor sees it go.
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)
        for pid in _children(self._process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self._process is not None
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
        return self._wait(timeout)

    def signal(self, sig: signal.Signals) -> None:
        """Send `sig` (SIGINT is what Ctrl-C sends) without waiting."""
        assert self._process is not None
        self._process.send_signal(sig)

    def wait_exit(self, timeout: float = 30.0) -> int:
        """The exit code, once it exits; subprocess.TimeoutExpired after `timeout`."""
        return self._wait(timeout)

    def wait_for_log(self, text: str, timeout: float = 30.0) -> str:
        """The first log line holding `text`, once one is written; fails after `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((line for line in list(self.lines) if text in line), None)
            if found is not None:
                return found
            time.sleep(0.05)
        raise AssertionError(f"no log line with {text!r} within {timeout:g} s:\n{self.log}")

    def _wait(self, timeout: float = 30.0) -> int:
        assert self._process is not None
        code = self._process.wait(timeout)
        if self._reader is not None:
            self._reader.join(5)
            if self._reader.is_alive():
                # Its children still write (a killed group's supervisor): the reader
                # reads on until they are gone, and closing the stream under it would
                # wait for them.
                return code
        if self._process.stderr is not None:
            self._process.stderr.close()
        return code

    def restart(self) -> ServerProcess:
        """Start again on the same port and data directory."""
        deadline = time.monotonic() + 10
        while True:
            try:
                return self.start()
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
