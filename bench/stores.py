"""Where each figure's broker keeps its state: a fresh, empty store per figure.

- SQLite (the default): a new data directory under the run's work directory.
- PostgreSQL (`--store postgresql://user@host:port/db`): a new database on that server
  for each figure, `mqpy_bench_<random>`, created through the URL's own database and
  dropped after the figure (unless `--keep`).
- A throwaway PostgreSQL (`--postgres`): a cluster of its own for the run, from
  Debian's packages, with fsync on as in production; databases as above.

The broker gets `--data-dir DIR` or `--store URL` accordingly. `database_watch` says
what the "database" CPU reading measures: our own cluster's postmaster and its
backends, every `postgres` process on the machine for a server on this machine that
is not ours, or nothing for SQLite (its work is in the broker's own process) and for a
server elsewhere.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bench.cpu import COMM_PREFIX, Watch

DATABASE_PREFIX = "mqpy_bench_"
LOCAL_HOSTS = {"", "localhost", "127.0.0.1", "::1", "[::1]"}
ADMIN_TIMEOUT = 60.0
T = TypeVar("T")


class StoreError(RuntimeError):
    """A figure's store could not be set up or the server cannot be reached."""


@dataclass
class FigureStore:
    """One figure's store: the `mqpy serve` flags that open it, and how to remove it."""

    server_args: list[str]
    where: str  # for messages: a directory or a URL without its password
    database: str | None = None  # the PostgreSQL database's name, to drop


class SQLiteStores:
    """A fresh SQLite data directory per figure, inside the run's work directory."""

    label = "SQLite, a fresh data directory per figure"
    database_watch: Watch | None = None
    backend = "sqlite"

    def open(self, workdir: Path, name: str) -> FigureStore:
        data_dir = workdir / f"{name}-data"
        return FigureStore(["--data-dir", str(data_dir)], str(data_dir))

    def release(self, store: FigureStore) -> None:
        """The directory goes with the work directory (or stays, with --keep)."""

    def close(self) -> None:
        pass


@dataclass
class PostgresStores:
    """A fresh database per figure on the PostgreSQL server at `url`."""

    url: str
    keep: bool = False
    label: str = ""
    database_watch: Watch | None = None
    backend: str = "postgresql"
    _open: list[FigureStore] = field(default_factory=list)

    @classmethod
    def at(cls, url: str, keep: bool) -> PostgresStores:
        """The server at `url` (checked now, so a wrong URL fails before any figure)."""
        try:
            version = _run(_fetch_version(url))
        except StoreError as exc:
            raise StoreError(f"--store: cannot reach PostgreSQL at {redact(url)}: {exc}") from exc
        host = urlsplit(url).hostname or ""
        local = host in LOCAL_HOSTS
        where = "on this machine" if local else "elsewhere (its CPU is not measured)"
        return cls(
            url=url,
            keep=keep,
            label=f"PostgreSQL {version} at {redact(url)} ({where}), a fresh database per figure",
            # Every cluster on the machine counts: we cannot tell ours from others'.
            database_watch=f"{COMM_PREFIX}postgres" if local else None,
        )

    def open(self, workdir: Path, name: str) -> FigureStore:
        database = f"{DATABASE_PREFIX}{uuid.uuid4().hex[:12]}"
        _run(_execute(self.url, f'CREATE DATABASE "{database}"'))
        store = FigureStore(
            ["--store", database_url(self.url, database)],
            redact(database_url(self.url, database)),
            database,
        )
        self._open.append(store)
        return store

    def release(self, store: FigureStore) -> None:
        """Drop the figure's database (its broker has stopped), unless --keep."""
        if store in self._open:
            self._open.remove(store)
        if self.keep or store.database is None:
            return
        try:
            # FORCE: a broker killed rather than stopped may leave a session behind.
            _run(_execute(self.url, f'DROP DATABASE IF EXISTS "{store.database}" WITH (FORCE)'))
        except StoreError as exc:
            print(f"note: could not drop {store.database}: {exc}", file=sys.stderr)

    def close(self) -> None:
        """Drop what an interrupted run left."""
        for store in list(self._open):
            self.release(store)


class ThrowawayPostgres(PostgresStores):
    """`--postgres`: a cluster of our own for the run, durable (fsync on)."""

    def __init__(self, keep: bool) -> None:
        # The cluster helper lives with the tests; the runner starts in the repository.
        root = str(Path(__file__).resolve().parent.parent)
        if root not in sys.path:
            sys.path.insert(0, root)
        from tests.support.postgres import PostgresCluster, PostgresError, postgres_available

        reason = postgres_available()
        if reason is not None:
            raise StoreError(f"--postgres: {reason}")
        self.cluster = PostgresCluster(durable=True)
        try:
            self.cluster.start()
        except PostgresError as exc:
            self.cluster.cleanup()
            raise StoreError(f"--postgres: the throwaway PostgreSQL did not start: {exc}") from exc
        url = self.cluster.url()
        version = _run(_fetch_version(url))
        super().__init__(
            url=url,
            keep=keep,
            label=(
                f"PostgreSQL {version}, a throwaway cluster of the bench's own at {url} "
                "(durable: fsync on), a fresh database per figure"
            ),
            # Our postmaster and its backends only: other clusters on the machine are
            # someone else's (they count among "others").
            database_watch=self.cluster.postmaster_pid(),
        )

    def close(self) -> None:
        super().close()
        if self.keep:
            self.cluster.stop()
            print(
                f"the throwaway PostgreSQL is stopped and kept in {self.cluster.directory} "
                f"(its log: {self.cluster.log_file})",
                file=sys.stderr,
            )
        else:
            self.cluster.cleanup()


Stores = SQLiteStores | PostgresStores


def database_url(url: str, database: str) -> str:
    """`url` naming `database` instead of its own."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


def redact(url: str) -> str:
    """`url` with any password as ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def is_postgres_url(text: str) -> bool:
    return text.startswith(("postgresql://", "postgres://"))


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coroutine)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise StoreError(str(exc) or type(exc).__name__) from exc


async def _execute(url: str, sql: str) -> None:
    connection = await asyncpg.connect(url, timeout=ADMIN_TIMEOUT)
    try:
        await connection.execute(sql, timeout=ADMIN_TIMEOUT)
    finally:
        await connection.close()


async def _fetch_version(url: str) -> str:
    connection = await asyncpg.connect(url, timeout=ADMIN_TIMEOUT)
    try:
        version: str = await connection.fetchval("SHOW server_version", timeout=ADMIN_TIMEOUT)
    finally:
        await connection.close()
    return version.split()[0]
