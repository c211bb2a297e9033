"""The fork server behind tests/support/launcher.py. Run as a script, never imported.

It imports what `mqpy serve` imports, once, and then forks one child per request. The
child runs mqpy/__main__.py through runpy, as `python -m mqpy` does, with the arguments,
environment, working directory and standard streams the test sent. A server's start
then costs a fork instead of about a third of a second of imports.

It stays single-threaded and never starts an event loop, so that each fork copies a
process with nothing half done. When the test process goes (its end of our stdin
closes), the children still running are killed and the fork server exits.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import json
import os
import runpy
import selectors
import signal
import socket
import sys
import tempfile
import threading
from dataclasses import dataclass
from typing import NoReturn

# What `mqpy serve` imports before it listens, on either store: imported in main().
_PREIMPORTED = ("mqpy.cli", "mqpy.runtime.server", "mqpy.store.postgres")

# A request is one datagram: the JSON below, with stdin, stdout and stderr attached.
_REQUEST_BYTES = 1 << 20
_STREAMS = 3


@dataclass
class Request:
    args: list[str]
    env: dict[str, str]
    cwd: str
    streams: list[int]


@dataclass
class Child:
    pid: int
    pidfd: int
    connection: socket.socket


def main() -> None:
    for name in _PREIMPORTED:
        importlib.import_module(name)
    # A collection in a child walks every object the fork server made and writes to
    # each one's header, so the kernel copies each of those pages into the child: about
    # 45 ms of CPU per command. Frozen, they are never walked (gc.freeze's documented
    # use before a fork); they are modules and classes that live as long as we do.
    gc.collect()
    gc.freeze()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(sys.argv[1])
    listener.listen(64)
    print("ready", flush=True)
    request = _serve(listener)  # returns only in a forked child
    _run_mqpy(request)


def _serve(listener: socket.socket) -> Request:
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(sys.stdin, selectors.EVENT_READ)
    children: dict[int, Child] = {}  # by pidfd
    while True:
        for key, _ in selector.select():
            if key.fileobj is sys.stdin:  # the test process is gone: so are its servers
                for child in children.values():
                    os.kill(child.pid, signal.SIGKILL)
                raise SystemExit(0)
            if key.fileobj is listener:
                connection, _ = listener.accept()
                request = _receive(connection)
                pid = os.fork()
                if pid == 0:
                    # The child keeps none of the fork server's descriptors.
                    selector.close()
                    listener.close()
                    connection.close()
                    for child in children.values():
                        child.connection.close()
                        os.close(child.pidfd)
                    return request
                for stream in request.streams:
                    os.close(stream)
                child = Child(pid, os.pidfd_open(pid), connection)
                children[child.pidfd] = child
                selector.register(child.pidfd, selectors.EVENT_READ)
                connection.send(str(pid).encode())
                continue
            # A pidfd is readable once its process has exited.
            child = children.pop(key.fd)
            selector.unregister(child.pidfd)
            os.close(child.pidfd)
            _, status = os.waitpid(child.pid, 0)
            code = os.waitstatus_to_exitcode(status)  # -N for signal N, as Popen says
            with contextlib.suppress(OSError):  # the test may have stopped waiting
                child.connection.send(str(code).encode())
            child.connection.close()


def _receive(connection: socket.socket) -> Request:
    message, streams, _, _ = socket.recv_fds(connection, _REQUEST_BYTES, _STREAMS)
    fields = json.loads(message)
    return Request(fields["args"], fields["env"], fields["cwd"], list(streams))


def _run_mqpy(request: Request) -> None:
    """Become `python -m mqpy ARGS` run from `cwd` with `env`; its exit is ours."""
    for target, stream in enumerate(request.streams):
        os.dup2(stream, target)
        os.close(stream)
    os.chdir(request.cwd)
    os.environ.clear()
    os.environ.update(request.env)
    tempfile.tempdir = None  # found again from TMPDIR, as a fresh python would
    sys.argv = ["-m", *request.args]  # runpy puts the module's path first, as -m does
    sys.path[0] = request.cwd  # `python -m` looks in the working directory first
    try:
        runpy.run_module("mqpy", run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        if not isinstance(exit_.code, int | None):
            raise  # a message to print: the interpreter prints it, as it would
        _exit(exit_.code or 0)
    _exit(0)


def _exit(code: int) -> NoReturn:
    """Exit as the interpreter does after `python -m mqpy`, in its order: wait for
    threads that are not daemons, run the atexit handlers, flush stdout and stderr. It
    then frees every module and object, which in a child writes to (and so copies)
    every page it shares with the fork server: about 25 ms of CPU per command. That
    part is skipped; what it could print (a __del__'s error, a ResourceWarning under
    -W) is not seen here, only with MQPY_TEST_LAUNCHER=0."""
    getattr(threading, "_shutdown")()  # noqa: B009 (private: what the interpreter calls)
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe, a closed stream
        # The interpreter's own flush says what failed and sets the exit status.
        raise SystemExit(code) from None
    os._exit(code)


if __name__ == "__main__":
    main()
