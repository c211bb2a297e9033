"""Start `python -m mqpy ARGS` fast: forked from a process that has already imported
mq-py (launcher_main.py, one per test process), or by subprocess.Popen where a fork
cannot be the same.

Either way the server is a real `mqpy serve` process of its own, with its own pid,
stderr and exit code: a test can signal it, kill it and restart it. What a fork skips is
the interpreter's start and the imports, which take most of a start (about 0.3 s of
0.43 s). Set MQPY_TEST_LAUNCHER=0 to start every server with Popen instead.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO

_MAIN = Path(__file__).with_name("launcher_main.py")
# Read by the interpreter as it starts, before a fork server's child could change them:
# a server given a value of its own that differs from the fork server's is started by
# Popen (the fsync and full-disk shims use LD_PRELOAD).
_STARTUP_PREFIXES = ("PYTHON", "LD_", "LC_", "LANG")


class LaunchedProcess:
    """A child of the fork server, with what ServerProcess uses of subprocess.Popen:
    pid, stderr, poll, wait and send_signal. Its exit code comes from the fork server,
    its parent, which reaps it."""

    def __init__(self, connection: socket.socket, pid: int, parent_pid: int, stderr: IO[str]):
        self.pid = pid
        self.parent_pid = parent_pid  # the fork server's, not the test process's
        self.stderr = stderr
        self.returncode: int | None = None
        self._connection = connection
        # A pidfd names this process and no later one that reuses its pid.
        self._pidfd = os.pidfd_open(pid)

    def poll(self) -> int | None:
        if self.returncode is None:
            self._connection.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                self._read_exit()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self._connection.settimeout(timeout)
            try:
                self._read_exit()
            except TimeoutError:
                raise subprocess.TimeoutExpired(["mqpy", str(self.pid)], timeout or 0) from None
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            # Exited since: as with Popen, there is nothing to signal.
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, sig)

    def _read_exit(self) -> None:
        answer = self._connection.recv(64)
        if not answer:
            raise RuntimeError(f"the fork server went away before mqpy {self.pid} exited")
        self.returncode = int(answer)
        self._connection.close()
        os.close(self._pidfd)


class _ForkServer:
    def __init__(self) -> None:
        self._directory = tempfile.mkdtemp(prefix="mqpy-launcher-")
        self.path = os.path.join(self._directory, "socket")
        self.environ = dict(os.environ)
        self._process = subprocess.Popen(
            [sys.executable, str(_MAIN), self.path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        if self._process.stdout.readline().strip() != "ready":
            self.close()
            raise RuntimeError(f"the fork server {_MAIN} did not start")
        atexit.register(self.close)

    def fits(self, env: Mapping[str, str]) -> bool:
        """Whether a fork can run with `env`: it must agree on what Python reads as it
        starts."""
        names = {*env, *self.environ}
        return all(
            env.get(name) == self.environ.get(name)
            for name in names
            if name.startswith(_STARTUP_PREFIXES)
        )

    def launch(self, args: list[str], env: Mapping[str, str]) -> LaunchedProcess:
        read_end, write_end = os.pipe()
        with open(os.devnull, "rb") as stdin, open(os.devnull, "wb") as stdout:
            request = json.dumps({"args": args, "env": dict(env), "cwd": os.getcwd()})
            connection = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                connection.connect(self.path)
                streams = [stdin.fileno(), stdout.fileno(), write_end]
                socket.send_fds(connection, [request.encode()], streams)
            finally:
                os.close(write_end)
            pid = int(connection.recv(64))
        return LaunchedProcess(connection, pid, self._process.pid, open(read_end, encoding=None))

    def close(self) -> None:
        if self._process.stdin is not None and not self._process.stdin.closed:
            self._process.stdin.close()  # it kills what it started and exits
        self._process.wait(10)
        shutil.rmtree(self._directory, ignore_errors=True)


_fork_server: _ForkServer | None = None


def start_mqpy(args: list[str], env: Mapping[str, str]) -> subprocess.Popen[str] | LaunchedProcess:
    """`python -m mqpy ARGS` with `env`, stderr a text pipe, stdout to /dev/null."""
    global _fork_server
    if os.environ.get("MQPY_TEST_LAUNCHER") != "0":
        if _fork_server is None:
            _fork_server = _ForkServer()
        if _fork_server.fits(env):
            return _fork_server.launch(args, env)
    return subprocess.Popen(
        [sys.executable, "-m", "mqpy", *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=dict(env),
    )
