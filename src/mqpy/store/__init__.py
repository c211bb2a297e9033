"""Durable storage behind one async interface; `open_store` picks the backend.

Where the store lives comes from `--store` (`MQPY_STORE`), read by `StoreLocation.parse`:
empty means SQLite in `--data-dir`; a path or `sqlite:` URL names a SQLite data
directory; a `postgresql://` URL or a libpq conninfo string names a PostgreSQL database
and goes to libpq verbatim, so libpq's own defaults and PG* variables fill in the rest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mqpy.config import DEFAULT_DATA_DIR
from mqpy.model.errors import StoreCannotOpen
from mqpy.store.base import Store
from mqpy.store.sqlite import SQLiteStore

__all__ = ["SQLiteStore", "Store", "StoreLocation", "open_store"]

ACCEPTED = (
    "give a directory, sqlite:///abs/path or sqlite:relative/path for SQLite, or a "
    "postgresql://user@host:5432/db URL or a 'host=... dbname=...' conninfo string for "
    "PostgreSQL"
)
_URL_START = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_CONNINFO = re.compile(r"^[A-Za-z_]+\s*=")
# libpq reads a conninfo value up to the next space, or quoted with backslash escapes.
_CONNINFO_PASSWORD = re.compile(
    r"""(\b(?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)""", re.IGNORECASE
)
# As libpq reads a URL, user and password end at an "@" before any "/"; the user is
# what comes before the first colon. Up to the last such "@", so that an unescaped "@"
# in a password stays hidden too.
_URL_PASSWORD = re.compile(r"^([^/:]*?):[^/]*@")
_QUERY_PASSWORD = re.compile(r"([?&](?:ssl)?password=)[^&#]*", re.IGNORECASE)
_POSTGRES_SCHEMES = ("postgresql", "postgres")


@dataclass(frozen=True)
class StoreLocation:
    """Where the store lives: a SQLite data directory or a PostgreSQL database.

    `target` is the directory (SQLite) or the libpq URL or conninfo string
    (PostgreSQL, passwords and all); `str()` and `repr()` show it with any password
    replaced by `***`, so a location can be logged."""

    backend: Literal["sqlite", "postgresql"]
    target: str = field(repr=False)

    @classmethod
    def parse(cls, store: str | None, data_dir: Path = DEFAULT_DATA_DIR) -> StoreLocation:
        """`--store` and `--data-dir` as one location; raises `StoreCannotOpen` for a
        value that is no store, or when both are given and name different stores."""
        text = (store or "").strip()
        if not text:
            return cls("sqlite", str(data_dir))
        location = _parse(text)
        if data_dir != DEFAULT_DATA_DIR and not location.is_directory(data_dir):
            raise StoreCannotOpen(
                f"--store {location} and --data-dir {data_dir} name two different stores: "
                "give only one of them (an empty MQPY_DATA_DIR counts as not given)"
            )
        return location

    def is_directory(self, directory: Path) -> bool:
        """Whether this is the SQLite store in `directory`."""
        return self.backend == "sqlite" and Path(self.target).resolve() == directory.resolve()

    def __str__(self) -> str:
        if self.backend == "sqlite":
            return f"sqlite:{self.target}"
        return redact(self.target)

    def __repr__(self) -> str:
        return f"StoreLocation({self.backend!r}, {str(self)!r})"


def open_store(
    location: StoreLocation,
    *,
    data_lock: int | None = None,
    member: tuple[int, int] | None = None,
) -> Store:
    """The store at `location`, not opened yet (`await store.open()` does that).
    `data_lock`: the SQLite data directory's lock, held by the supervisor of a group of
    processes this one belongs to (`mqpy serve --processes N`); `member`: which of the
    group's processes this is, and how many there are."""
    if location.backend == "sqlite":
        return SQLiteStore(Path(location.target), group_lock=data_lock, member=member)
    try:
        # Imported only when asked for: the embedded default needs no PostgreSQL driver.
        from mqpy.store.postgres import PostgresStore
    except ImportError as exc:
        raise StoreCannotOpen(
            f"--store {location}: the PostgreSQL store cannot be loaded ({exc})"
        ) from None
    return PostgresStore(location.target)


def redact(dsn: str) -> str:
    """A libpq URL or conninfo string with every password replaced by `***`."""
    url = _URL_START.match(dsn)
    if url is None:
        return _CONNINFO_PASSWORD.sub(r"\1***", dsn)
    rest = _URL_PASSWORD.sub(r"\1:***@", dsn[url.end() :], count=1)
    return url.group() + _QUERY_PASSWORD.sub(r"\1***", rest)


def _parse(text: str) -> StoreLocation:
    scheme_match = _SCHEME.match(text)
    scheme = scheme_match.group(1).lower() if scheme_match else ""
    rest = text[len(scheme) + 1 :] if scheme_match else ""
    if scheme in _POSTGRES_SCHEMES:
        if not rest.startswith("//"):
            raise _malformed(text, f"a {scheme} URL starts with {scheme}://")
        return StoreLocation("postgresql", f"{scheme}:{rest}")  # libpq wants it lower-case
    if scheme == "sqlite":
        return StoreLocation("sqlite", _sqlite_directory(text, rest))
    if scheme == "memory":
        # The in-memory store (store/memory.py) is for tests: a 200 on /send means the
        # message is on disk, which memory cannot keep. Without this, "memory:" would
        # name a SQLite directory of that name.
        raise _malformed(text, "mq-py keeps no store in memory alone: what it accepts is on disk")
    if rest.startswith("//"):
        raise _malformed(text, f"mq-py has no {scheme}:// store")
    if _CONNINFO.match(text):
        return StoreLocation("postgresql", text)
    return StoreLocation("sqlite", text)


def _sqlite_directory(text: str, rest: str) -> str:
    """The directory of `sqlite:///abs/path` or `sqlite:relative/path`."""
    if rest.startswith("//"):
        rest = rest[2:]
        if rest and not rest.startswith("/"):
            raise _malformed(text, "a sqlite:// URL has no host: sqlite:///abs/path")
    if not rest.strip("/"):
        raise _malformed(text, "it names no directory")
    return rest


def _malformed(text: str, reason: str) -> StoreCannotOpen:
    return StoreCannotOpen(f"--store {redact(text)!r} is not a store ({reason}); {ACCEPTED}")
