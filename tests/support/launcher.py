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
import locale
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, TypeVar

_MAIN = Path(__file__).with_name("launcher_main.py")
# Read by the interpreter as it starts, before a fork server's child could change them:
# a server given a value of its own that differs from the fork server's is started by
# Popen (the fsync and full-disk shims use LD_PRELOAD).
_STARTUP_PREFIXES = ("PYTHON", "LD_", "LC_", "LANG")


class LaunchedProcess:
    """A child of the fork server, with what the tests use of subprocess.Popen: pid,
    stderr, poll, wait and send_signal. Its exit code comes from the fork server, its
    parent, which reaps it."""

    def __init__(self, connection: socket.socket, parent_pid: int):
        self.pid = int(connection.recv(64))
        self.parent_pid = parent_pid  # the fork server's, not the test process's
        self.stdout: IO[str] | None = None
        self.stderr: IO[str] | None = None
        self.returncode: int | None = None
        self._connection = connection
        # A pidfd names this process and no later one that reuses its pid.
        self._pidfd = os.pidfd_open(self.pid)

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

    def launch(
        self, args: list[str], env: Mapping[str, str], streams: list[int], cwd: str | None = None
    ) -> LaunchedProcess:
        """Fork `python -m mqpy ARGS` with `streams` as its stdin, stdout and stderr, in
        `cwd` (None: this process's). The caller closes its own copies of the streams."""
        request = json.dumps({"args": args, "env": dict(env), "cwd": cwd or os.getcwd()})
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        connection.connect(self.path)
        socket.send_fds(connection, [request.encode()], streams)
        return LaunchedProcess(connection, self._process.pid)

    def close(self) -> None:
        if self._process.stdin is not None and not self._process.stdin.closed:
            self._process.stdin.close()  # it kills what it started and exits
        self._process.wait(10)
        shutil.rmtree(self._directory, ignore_errors=True)


_fork_server: _ForkServer | None = None
# Commands may be run from several threads at once (each_at_once): one fork server each.
_fork_server_lock = threading.Lock()


def _fork_server_for(env: Mapping[str, str]) -> _ForkServer | None:
    global _fork_server
    if os.environ.get("MQPY_TEST_LAUNCHER") == "0":
        return None
    with _fork_server_lock:
        if _fork_server is None:
            _fork_server = _ForkServer()
    return _fork_server if _fork_server.fits(env) else None


def start_mqpy(
    args: list[str],
    env: Mapping[str, str],
    *,
    capture_stdout: bool = False,
    cwd: str | None = None,
) -> subprocess.Popen[str] | LaunchedProcess:
    """`python -m mqpy ARGS` with `env` in `cwd` (None: this process's): stdin this
    process's, stderr a text pipe, stdout a text pipe too or /dev/null (what
    ServerProcess gives a server)."""
    fork_server = _fork_server_for(env)
    if fork_server is None:
        return subprocess.Popen(
            [sys.executable, "-m", "mqpy", *args],
            stderr=subprocess.PIPE,
            stdout=subprocess.PIPE if capture_stdout else subprocess.DEVNULL,
            text=True,
            env=dict(env),
            cwd=cwd,
        )
    err_read, err_write = os.pipe()
    out_read, out_write = os.pipe() if capture_stdout else (-1, os.open(os.devnull, os.O_WRONLY))
    try:
        process = fork_server.launch(args, env, [0, out_write, err_write], cwd)
    finally:
        os.close(out_write)
        os.close(err_write)
    # Text streams as Popen(text=True) makes them; the caller closes them.
    process.stderr = open(err_read, encoding=None)  # noqa: SIM115
    process.stdout = open(out_read, encoding=None) if capture_stdout else None  # noqa: SIM115
    return process


def run_mqpy(
    args: list[str], env: Mapping[str, str], stdin: bytes | None, timeout: float
) -> subprocess.CompletedProcess[bytes]:
    """`python -m mqpy ARGS` to its end, as subprocess.run(capture_output=True) runs it:
    `stdin` its input (None: this process's stdin), stdout and stderr captured, killed
    and TimeoutExpired after `timeout`."""
    command = [sys.executable, "-m", "mqpy", *args]
    fork_server = _fork_server_for(env)
    if fork_server is None:
        return subprocess.run(
            command, input=stdin, capture_output=True, timeout=timeout, env=dict(env)
        )
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    in_read, in_write = os.pipe() if stdin is not None else (0, -1)
    try:
        process = fork_server.launch(args, env, [in_read, out_write, err_write])
    finally:
        for end in (out_write, err_write) + ((in_read,) if stdin is not None else ()):
            os.close(end)
    captured: dict[int, bytes] = {}
    workers = [
        threading.Thread(target=_read_all, args=(end, captured)) for end in (out_read, err_read)
    ]
    if stdin is not None:
        workers.append(threading.Thread(target=_write_all, args=(in_write, stdin)))
    for worker in workers:
        worker.start()
    try:
        code = process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
        raise
    finally:
        for worker in workers:
            worker.join()
    return subprocess.CompletedProcess(command, code, captured[out_read], captured[err_read])


def _read_all(end: int, captured: dict[int, bytes]) -> None:
    with open(end, "rb") as stream:
        captured[end] = stream.read()


def _write_all(end: int, data: bytes) -> None:
    with contextlib.suppress(BrokenPipeError), open(end, "wb") as stream:
        stream.write(data)  # a command may exit without reading all of it, as with run()


def run_mqpy_text(
    args: list[str], env: Mapping[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """run_mqpy, its output decoded as subprocess.run(text=True) decodes it."""
    result = run_mqpy(args, env, None, timeout)
    stdout, stderr = (_decoded(output) for output in (result.stdout, result.stderr))
    return subprocess.CompletedProcess(result.args, result.returncode, stdout, stderr)


def _decoded(output: bytes) -> str:
    text = output.decode(locale.getpreferredencoding(False))
    return text.replace("\r\n", "\n").replace("\r", "\n")


T = TypeVar("T")
R = TypeVar("R")


def each_at_once(run: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """`run` on every item, all at the same time, results in the order of `items`. For
    commands that mostly wait (a CLI's retries on a port where nothing listens): their
    waits overlap instead of adding up."""
    listed = list(items)
    with ThreadPoolExecutor(max_workers=max(1, len(listed))) as pool:
        return list(pool.map(run, listed))
