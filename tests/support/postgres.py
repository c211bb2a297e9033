"""A real, throwaway PostgreSQL server from Debian's packages, for tests.

It runs from a fresh temporary directory on a loopback port and trusts every local
connection. Databases are made and dropped over one asyncpg connection the cluster keeps
(a `psql` run per statement took about 25 ms against 9 ms, for each of some 200 test
databases in `make check`); `psql()` remains for anything else. The server refuses to
run as root, and tests and CI run as root: then the directory belongs to Debian's
`postgres` user and the server's commands run as it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

POSTGRES_ROOT = Path("/usr/lib/postgresql")
SERVER_USER = "postgres"  # the system user Debian's postgresql package creates
SUPERUSER = "postgres"
INSTALL_HINT = "apt-get install postgresql"

# Throwaway data: a crash of the machine may lose it, a crash of the server may not
# (the kernel still has the pages). synchronous_commit stays on, so a commit means
# what it means in production.
TEST_SETTINGS = {"fsync": "off", "full_page_writes": "off"}
COMMON_SETTINGS = {"max_connections": "300", "shared_buffers": "128MB"}


ADMIN_TIMEOUT = 60.0  # seconds a statement on the admin connection may take (as psql's)

T = TypeVar("T")


class PostgresError(RuntimeError):
    """The throwaway server could not be set up, started, stopped or administered."""


class AdminConnection:
    """One connection to the `postgres` database for statements the harness runs between
    tests, opened at the first and reopened after the server went away.

    Its event loop runs in a thread of its own: the callers are sync, and some call while
    an event loop runs in their thread (bench/retention.py makes a database in one).
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._connection: asyncpg.Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def execute(self, sql: str) -> None:
        """Run one statement (the simple query protocol: CREATE DATABASE is allowed)."""
        try:
            self._run(self._execute(sql, reconnect=True))
        except TimeoutError as timeout:  # before OSError, its base class
            raise PostgresError(f"{sql!r} took over {ADMIN_TIMEOUT:g} s") from timeout
        except (
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.exceptions.InternalClientError,
            OSError,
        ) as error:
            raise PostgresError(f"{sql!r} failed: {error}") from error

    async def _execute(self, sql: str, *, reconnect: bool) -> None:
        if self._connection is None or self._connection.is_closed():
            self._connection = await asyncpg.connect(self.url)
        try:
            await self._connection.execute(sql)
        except Exception as error:
            # A server's answer to the statement leaves the session usable. Anything else
            # (a closed socket, an ended session, asyncpg confused by a FATAL that came
            # while idle) means a test restarted or killed the server behind the
            # cluster's back, or ended every session: once more on a new connection.
            lost = not isinstance(error, asyncpg.PostgresError) or isinstance(
                error, asyncpg.exceptions.OperatorInterventionError
            )
            if not lost:
                raise
            self._connection.terminate()
            self._connection = None
            if not reconnect:
                raise
            await self._execute(sql, reconnect=False)

    def close(self) -> None:
        """Close the connection (before the server stops) and end the loop's thread."""
        if self._loop is None or self._thread is None:
            return
        connection, self._connection = self._connection, None
        try:
            if connection is not None:
                self._run(connection.close(timeout=5))
        finally:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=self._loop.run_forever, name="postgres-admin", daemon=True
            )
            self._thread.start()
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(ADMIN_TIMEOUT)


def newest_bin_dir() -> Path | None:
    """The bin directory of the newest PostgreSQL server installed, if any."""
    versions = []
    for initdb in POSTGRES_ROOT.glob("*/bin/initdb"):
        bin_dir = initdb.parent
        if (bin_dir / "postgres").exists() and bin_dir.parent.name.isdigit():
            versions.append((int(bin_dir.parent.name), bin_dir))
    return max(versions)[1] if versions else None


def postgres_available() -> str | None:
    """None if a throwaway server can be started here, else a one-line reason."""
    bin_dir = newest_bin_dir()
    if bin_dir is None:
        return f"PostgreSQL server binaries not found ({INSTALL_HINT})"
    if not (bin_dir / "psql").exists():
        return f"{bin_dir}/psql not found ({INSTALL_HINT})"
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            return "runuser not found: needed to run PostgreSQL as a non-root user (util-linux)"
        if not _user_exists(SERVER_USER):
            return f"no '{SERVER_USER}' system user to run PostgreSQL as root ({INSTALL_HINT})"
    return None


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (the server binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PostgresCluster:
    """One PostgreSQL server in a temporary directory, on one port for its whole life.

    `durable=True` keeps PostgreSQL's own fsync defaults (for measurements); the
    default trades crash-of-the-machine safety for speed, which tests never need.
    """

    def __init__(self, *, durable: bool = False) -> None:
        bin_dir = newest_bin_dir()
        if bin_dir is None:
            raise PostgresError(f"PostgreSQL server binaries not found ({INSTALL_HINT})")
        self.bin_dir = bin_dir
        self.durable = durable
        self.port = 0
        self.directory: Path | None = None
        self._as_server_user = os.geteuid() == 0
        self._admin: AdminConnection | None = None

    # --- where things are -------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self._directory / "data"

    @property
    def socket_dir(self) -> Path:
        return self._directory / "sockets"

    @property
    def log_file(self) -> Path:
        return self._directory / "postgres.log"

    @property
    def _directory(self) -> Path:
        if self.directory is None:
            raise PostgresError("the cluster has not been created: call start() first")
        return self.directory

    def url(self, dbname: str = "postgres") -> str:
        """The URL a client connects with; the same across restart()."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    # --- life cycle -------------------------------------------------------------------

    def start(self) -> PostgresCluster:
        """Create the cluster on first use, then start it and wait until it accepts."""
        if self.directory is None:
            self._create()
            self._start_on_a_free_port()
        else:
            self._start_on(self.port)
        return self

    def _start_on_a_free_port(self, attempts: int = 3) -> None:
        """The port is chosen before the server binds it: if another process took it in
        between, choose again (once started, the port is kept for good)."""
        for attempt in range(attempts):
            port = free_port()
            try:
                self._start_on(port)
            except PostgresError:
                if attempt + 1 == attempts or _port_is_free(port):
                    raise
            else:
                self.port = port
                return

    def _start_on(self, port: int) -> None:
        # pg_ctl hands -o to the postmaster through a shell: a bare number is safe there.
        self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.log_file), "-o", f"-p {port}")

    def stop(self) -> None:
        """Fast shutdown: open sessions are ended, committed work is kept."""
        self._close_admin()
        if self.running():
            self._pg_ctl("stop", "-m", "fast", "-w", "-t", "60")

    def restart(self) -> None:
        """Stop and start on the same port and data; clients must reconnect."""
        self.stop()
        self.start()

    def kill(self) -> None:
        """SIGKILL the postmaster, as a crash would, and wait for its backends to go.

        Backends leave by themselves when their postmaster dies; until they have, a new
        postmaster would refuse to start on shared memory still in use. The lock files
        go too: where nothing reaps orphans (a container's init may not), the dead
        postmaster stays a zombie, and a new one would take it for a live owner.
        """
        self._close_admin()
        pid = self.postmaster_pid()
        if pid is None:
            return
        children = _children_of(pid)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        _wait_gone([pid, *children], timeout=10.0)
        for lock_file in [self.data_dir / "postmaster.pid", *self.socket_dir.glob("*.lock")]:
            lock_file.unlink(missing_ok=True)

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """The server stops answering, as behind a network partition: its processes
        are stopped (SIGSTOP) and go on (SIGCONT) when the block ends. Connections stay
        open and nothing is refused: queries wait."""
        pid = self.postmaster_pid()
        if pid is None:
            raise PostgresError("the cluster is not running")
        stopped = [pid, *_children_of(pid)]
        for each in stopped:
            os.kill(each, signal.SIGSTOP)
        try:
            yield
        finally:
            for each in stopped:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(each, signal.SIGCONT)

    def cleanup(self) -> None:
        """Stop the server (killing it if it will not stop) and remove its directory."""
        if self.directory is None:
            return
        try:
            self.stop()
        except PostgresError:
            self.kill()
        if self.running():
            self.kill()
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory = None

    def running(self) -> bool:
        pid = self.postmaster_pid()
        return pid is not None and _alive(pid)

    def postmaster_pid(self) -> int | None:
        """The postmaster's process id from its lock file, if it has one."""
        if self.directory is None:
            return None
        try:
            first_line = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
        except (FileNotFoundError, PermissionError):
            return None
        return int(first_line) if first_line.strip().isdigit() else None

    # --- databases --------------------------------------------------------------------

    def create_database(self, template: str | None = None) -> str:
        """A new database with a unique name, empty or a copy of `template` (a database
        of this cluster nobody is connected to); returns its URL."""
        name = f"test_{uuid.uuid4().hex[:16]}"
        if template is None:
            self.admin.execute(f'CREATE DATABASE "{name}"')
        else:
            if not _is_plain_name(template):
                raise PostgresError(f"not a database name: {template!r}")
            self.admin.execute(
                f'CREATE DATABASE "{name}" TEMPLATE "{template}"{self._copy_strategy}'
            )
        return self.url(name)

    @property
    def _copy_strategy(self) -> str:
        # PostgreSQL 15 copies a template block by block through the WAL by default;
        # copying its files takes about 30% less CPU for a schema as small as ours (and
        # the test settings make the checkpoints around it cheap).
        return " STRATEGY = FILE_COPY" if int(self.bin_dir.parent.name) >= 15 else ""

    def drop_database(self, name: str) -> None:
        """Drop a database even while clients are still connected to it."""
        if not _is_plain_name(name):
            raise PostgresError(f"not a database name this cluster made: {name!r}")
        self.admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    @property
    def admin(self) -> AdminConnection:
        """The connection databases are made and dropped on, opened at its first use."""
        if self._admin is None:
            self._admin = AdminConnection(self.url())
        return self._admin

    def _close_admin(self) -> None:
        # A server stopping with fast shutdown ends the session anyway; closing it first
        # keeps the server's log free of a terminated admin session, and a killed
        # server's sockets are not read again.
        if self._admin is not None:
            admin, self._admin = self._admin, None
            with contextlib.suppress(PostgresError, OSError, asyncpg.PostgresError, TimeoutError):
                admin.close()

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run SQL with the cluster's own psql; returns unaligned, tuples-only output."""
        command = [
            str(self.bin_dir / "psql"),
            "--no-psqlrc",
            "--quiet",
            "--tuples-only",
            "--no-align",
            "--set=ON_ERROR_STOP=1",
            f"--dbname={self.url(dbname)}",
            f"--command={sql}",
        ]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
        )
        if result.returncode != 0:
            raise PostgresError(f"psql failed on {sql!r}: {result.stderr.strip()}")
        return result.stdout

    # --- the commands that must not run as root ----------------------------------------

    def _create(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="mqpy-postgres-"))
        self.socket_dir.mkdir()
        if self._as_server_user:
            shutil.chown(self.directory, SERVER_USER, SERVER_USER)
            shutil.chown(self.socket_dir, SERVER_USER, SERVER_USER)
        self._run_as_server(
            str(self.bin_dir / "initdb"),
            f"--pgdata={self.data_dir}",
            f"--username={SUPERUSER}",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",  # throwaway: nothing to gain from flushing the fresh cluster
        )
        self._append_settings()

    def _append_settings(self) -> None:
        """Settings go in postgresql.conf so that every start uses them (the port is
        given at each start: it is chosen at the first)."""
        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.socket_dir),
            **COMMON_SETTINGS,
            **({} if self.durable else TEST_SETTINGS),
        }
        lines = [f"{key} = '{value}'" for key, value in settings.items()]
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# mq-py tests\n" + "\n".join(lines) + "\n")

    def _pg_ctl(self, *args: str) -> None:
        self._run_as_server(str(self.bin_dir / "pg_ctl"), f"--pgdata={self.data_dir}", *args)

    def _run_as_server(self, *command: str) -> None:
        prefix: Sequence[str] = ("runuser", "-u", SERVER_USER, "--") if self._as_server_user else ()
        # The server user may not be allowed into our working directory: run from its own.
        # stdout goes to a file, not a pipe: the postmaster inherits it and outlives us.
        with tempfile.TemporaryFile(mode="w+") as output:
            try:
                result = subprocess.run(
                    [*prefix, *command],
                    cwd=self._directory,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    timeout=90,
                )
            except subprocess.TimeoutExpired as timeout:
                raise PostgresError(f"{command[0]} timed out{self._log_tail()}") from timeout
            if result.returncode != 0:
                output.seek(0)
                raise PostgresError(
                    f"{' '.join(command)} failed ({result.returncode}):\n"
                    f"{output.read().strip()}{self._log_tail()}"
                )

    def _log_tail(self, lines: int = 30) -> str:
        try:
            tail = self.log_file.read_text(errors="replace").splitlines()[-lines:]
        except (FileNotFoundError, PostgresError):
            return ""
        return "\nserver log (last lines):\n" + "\n".join(tail)


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _is_plain_name(name: str) -> bool:
    return re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", name) is not None


def _alive(pid: int) -> bool:
    """Whether a process runs; a zombie nobody reaps counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def _children_of(parent: int) -> list[int]:
    children = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[1]) == parent:
            children.append(int(stat_file.parent.name))
    return children


def _wait_gone(pids: list[int], timeout: float) -> None:
    """Wait for processes to end; one that outstays the timeout is killed."""
    for attempt in range(2):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not any(_alive(pid) for pid in pids):
                return
            time.sleep(0.02)
        if attempt == 0:
            for pid in filter(_alive, pids):  # a backend stuck past its postmaster's death
                os.kill(pid, signal.SIGKILL)
    raise PostgresError(f"PostgreSQL processes did not end: {list(filter(_alive, pids))}")


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[PostgresCluster]:
    """A started cluster, removed afterwards. The test skips where PostgreSQL is not
    installed, except under CI, where it must be (.ci/run installs it) and fails."""
    import pytest  # here: the torture suite and the benchmark use this module outside pytest

    reason = postgres_available()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: .ci/run installs it)")
        pytest.skip(reason)
    cluster = PostgresCluster()
    try:
        yield cluster.start()
    finally:
        cluster.cleanup()
