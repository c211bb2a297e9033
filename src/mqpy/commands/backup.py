"""`mqpy backup DEST`: an online, consistent copy of the SQLite store.

It finds the store as `mqpy serve` does (`--store`, `--data-dir`, their MQPY_*
variables). A PostgreSQL store is backed up with PostgreSQL's own pg_dump instead.

It reads the data directory's database with SQLite's backup API while the broker keeps
running. In WAL mode a reader works alongside the broker's writer, and copying every
page in one step happens inside one read transaction, so the copy is one consistent
moment of the store. It needs neither the data directory's lock (the running broker
holds it) nor the server's HTTP API. The copy is written to a temporary file beside
DEST, checked with PRAGMA integrity_check, and only then renamed to DEST, so an
interrupted or failed backup never replaces a good earlier one.

Exit codes: 0 done, 1 the backup failed (the message says why), 2 usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sqlite3
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mqpy.commands import EXIT_OK, EXIT_USAGE, CommandFailed, set_handler
from mqpy.commands.parsers import command
from mqpy.config import Option, options
from mqpy.model.errors import StoreCannotOpen
from mqpy.store import StoreLocation
from mqpy.store.sqlite import DATABASE_FILE

EXIT_FAILED = 1
# How long to wait for SQLite's locks (the broker's writer checkpointing the WAL).
BUSY_TIMEOUT_SECONDS = 30.0
_BACKUP_NAME = "mqpy-backup-{stamp}.sqlite3"


@dataclass(frozen=True)
class Backup:
    """A finished backup: where it came from, where it is, how big it is."""

    source: Path
    path: Path
    bytes: int


def register(subparsers: Any) -> None:
    """Add `backup` to the `mqpy` parser's subparsers."""
    data_dir = _option("data_dir")
    parser = command(
        subparsers,
        "backup",
        help="copy the SQLite store to a file while the broker runs",
        description="Copy the data directory's SQLite store to DEST while the broker "
        "keeps running (SQLite's online backup). The copy is checked with "
        "PRAGMA integrity_check before it replaces DEST. Restore: stop the broker, "
        f"put the copy in the data directory as {DATABASE_FILE}, start it. "
        "Exit codes: 0 done, 1 the backup failed, 2 usage error.",
    )
    parser.add_argument(
        "dest",
        metavar="DEST",
        help="the file to write (replaced if it exists); an existing directory gets "
        f"a new file named {_BACKUP_NAME.format(stamp='YYYYMMDDTHHMMSSZ')}",
    )
    store = _option("store")
    parser.add_argument(
        "--store",
        default=None,
        metavar="STORE",
        help="the broker's store, as `mqpy serve --store` takes it (default: the SQLite "
        f"store in --data-dir; env {store.env}); a PostgreSQL store is for pg_dump",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help=f"the broker's data directory (default: {data_dir.default}; env {data_dir.env})",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the result as JSON: source, path, bytes"
    )
    set_handler(parser, run_backup)


def run_backup(args: argparse.Namespace) -> int:
    data_dir = sqlite_data_dir(resolve_store(args.store, args.data_dir))
    backup = back_up(data_dir, Path(args.dest))
    if args.json:
        print(
            json.dumps(
                {"source": str(backup.source), "path": str(backup.path), "bytes": backup.bytes}
            )
        )
    else:
        print(f"{backup.path} ({backup.bytes} bytes)")
    return EXIT_OK


def resolve_store(
    store_flag: str | None, data_dir_flag: str | None, environ: Mapping[str, str] | None = None
) -> StoreLocation:
    """--store and --data-dir, each flag before its MQPY_* variable: as `mqpy serve`
    finds the store. A value that names no store is a usage error."""
    environ = os.environ if environ is None else environ
    store = store_flag if store_flag is not None else environ.get(_option("store").env)
    try:
        return StoreLocation.parse(store, resolve_data_dir(data_dir_flag, environ))
    except StoreCannotOpen as exc:
        raise CommandFailed(EXIT_USAGE, str(exc)) from None


def sqlite_data_dir(location: StoreLocation) -> Path:
    """The data directory of a SQLite store; any other store is a usage error."""
    if location.backend != "sqlite":
        raise CommandFailed(
            EXIT_USAGE,
            "this copies a SQLite store only; back up a PostgreSQL store with pg_dump, "
            "for example: pg_dump --format=custom --file=mqpy.dump " + shlex.quote(str(location)),
        )
    return Path(location.target)


def resolve_data_dir(flag: str | None, environ: Mapping[str, str] | None = None) -> Path:
    """--data-dir, then MQPY_DATA_DIR, then the default: as `mqpy serve` finds it."""
    environ = os.environ if environ is None else environ
    option = _option("data_dir")
    raw = flag if flag is not None else environ.get(option.env)
    return Path(raw) if raw else Path(option.default)


def _option(name: str) -> Option:
    return next(option for option in options() if option.name == name)


def back_up(data_dir: Path, dest: Path) -> Backup:
    """Copy `data_dir`'s store to `dest` (or a new file in it, if it is a directory)."""
    source = data_dir / DATABASE_FILE
    if not source.is_file():
        raise CommandFailed(
            EXIT_FAILED,
            f"no mq-py store at {source}; give the broker's store with --store or "
            "--data-dir (or MQPY_STORE, MQPY_DATA_DIR)",
        )
    if dest.is_dir():
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        dest = dest / _BACKUP_NAME.format(stamp=stamp)
    _refuse_inside_data_dir(data_dir, dest)
    if not dest.parent.is_dir():
        raise CommandFailed(EXIT_FAILED, f"cannot write {dest}: {dest.parent} is not a directory")
    try:
        temporary = _copy_to_temporary(source, dest.parent)
    except (OSError, sqlite3.Error) as error:
        raise CommandFailed(EXIT_FAILED, f"cannot back up {source} to {dest}: {error}") from None
    try:
        _check_integrity(temporary)
        os.replace(temporary, dest)
    except BaseException:
        _remove(temporary)
        raise
    _sync_directory(dest.parent)
    return Backup(source, dest, dest.stat().st_size)


def _refuse_inside_data_dir(data_dir: Path, dest: Path) -> None:
    # A copy renamed over the live database (or its -wal, -shm or lock file) would
    # corrupt the store under the running broker; and a backup on the same disk, in the
    # same directory, is no backup.
    if dest.parent.resolve() == data_dir.resolve():
        raise CommandFailed(
            EXIT_FAILED,
            f"refusing to write the backup into the data directory {data_dir}; "
            "choose a DEST outside it (ideally on another disk)",
        )


def _copy_to_temporary(source: Path, directory: Path) -> Path:
    """The whole store, copied into a new owner-only file in `directory`."""
    # mkstemp creates the file with mode 0600 whatever the umask: the copy holds
    # message bodies and receivers' signing secrets, as the store does.
    handle, name = tempfile.mkstemp(prefix=".mqpy-backup-", suffix=".tmp", dir=directory)
    os.close(handle)
    temporary = Path(name)
    try:
        # Read-only: the backup never writes to the store and never creates one.
        reader = sqlite3.connect(
            f"{source.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_SECONDS
        )
        try:
            writer = sqlite3.connect(temporary, timeout=BUSY_TIMEOUT_SECONDS)
            try:
                # pages=-1: every page in one step, so in one read transaction, which
                # is what makes the copy consistent while the broker writes on.
                reader.backup(writer, pages=-1)
                # One self-contained file: no -wal beside it to forget. The broker turns
                # WAL back on when it opens a restored copy.
                writer.execute("PRAGMA journal_mode = DELETE")
            finally:
                writer.close()
        finally:
            reader.close()
        with open(temporary, "rb") as copy:
            os.fsync(copy.fileno())
    except BaseException:
        _remove(temporary)
        raise
    return temporary


def _check_integrity(path: Path) -> None:
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            rows = connection.execute("PRAGMA integrity_check").fetchall()
        finally:
            connection.close()
    except sqlite3.Error as error:
        rows = [(str(error),)]
    problems = [str(row[0]) for row in rows]
    if problems != ["ok"]:
        raise CommandFailed(
            EXIT_FAILED,
            "the copy failed PRAGMA integrity_check, so nothing was written: "
            + "; ".join(problems[:5])
            + " (check the store itself with: sqlite3 -readonly "
            + f"<data-dir>/{DATABASE_FILE} 'PRAGMA integrity_check')",
        )


def _sync_directory(directory: Path) -> None:
    # The rename is durable once the directory entry is on disk.
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    for suffix in ("-journal", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            Path(f"{path}{suffix}").unlink()
