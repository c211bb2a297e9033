"""`mqpy backup`, run as a real process against the store of a real, running broker; the
copy is then proven by starting a second broker on it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sqlite3
import stat
from pathlib import Path

import aiohttp

from tests.conftest import ReceiverFactory, ServerFactory
from tests.support.client import SeedClient
from tests.support.launcher import run_mqpy
from tests.support.load import publish_many, wait_for_ids, wait_until
from tests.support.server import ServerProcess

DATABASE_FILE = "mqpy.sqlite3"
_PRINTED = re.compile(r"^(?P<path>.+) \((?P<bytes>\d+) bytes\)$")


class Finished:
    """What a finished `mqpy backup` process said."""

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr

    def succeeded(self) -> tuple[Path, int]:
        """The path and size it printed, once it exited 0."""
        assert self.returncode == 0, (self.returncode, self.stdout, self.stderr)
        match = _PRINTED.match(self.stdout.strip())
        assert match, self.stdout
        return Path(match["path"]), int(match["bytes"])


def clean_env(**extra: str) -> dict[str, str]:
    """No MQPY_* from the developer's shell."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("MQPY_")}
    return {**env, **extra}


async def mqpy_backup(*args: str, env: dict[str, str] | None = None) -> Finished:
    """Run `python -m mqpy backup ARGS` without blocking the event loop (receivers and
    publishers in the test keep running meanwhile)."""
    result = await asyncio.to_thread(run_mqpy, ["backup", *args], env or clean_env(), None, 60)
    return Finished(result.returncode, result.stdout.decode(), result.stderr.decode())


def restore(backup: Path, data_dir: Path) -> Path:
    """Restore as docs/operations.md says: the copy becomes the data dir's database."""
    data_dir.mkdir(mode=0o700)
    shutil.copy2(backup, data_dir / DATABASE_FILE)
    return data_dir


def stored_message_ids(database: Path) -> set[str]:
    connection = sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return {row[0] for row in connection.execute("SELECT id FROM messages")}
    finally:
        connection.close()


def leftovers(directory: Path) -> list[str]:
    """Temporary files a backup left behind."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".mqpy-backup-"))


async def test_a_backup_of_a_running_broker_restores_its_messages(
    start_server: ServerFactory,
    http: aiohttp.ClientSession,
    start_receiver: ReceiverFactory,
    tmp_path: Path,
) -> None:
    server = start_server()
    client = SeedClient(http, server.url)
    sender = await client.connect_sender()
    bodies = [f"waiting {n}" for n in range(300)]
    ids = await publish_many(client, sender, bodies)  # no receiver: kept for retention

    backups = tmp_path / "backups"
    backups.mkdir()
    dest = backups / "mqpy.sqlite3"
    dest.write_text("an earlier backup")
    dest.chmod(0o644)
    # The data directory from MQPY_DATA_DIR, as `mqpy serve` would take it; the running
    # broker holds the data directory's lock the whole time.
    result = await mqpy_backup(str(dest), env=clean_env(MQPY_DATA_DIR=str(server.data_dir)))
    path, size = result.succeeded()

    assert path == dest
    assert size == dest.stat().st_size > 0
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert leftovers(backups) == []
    assert stored_message_ids(dest) == set(ids)
    assert server.running
    await client.send(sender, "after the backup")  # the broker did not notice

    second = start_server(data_dir=restore(dest, tmp_path / "restored"))
    restored = SeedClient(http, second.url)
    receiver = await start_receiver()
    await restored.connect_receiver(receiver.url, start_at="earliest")
    counts = await wait_for_ids(receiver, ids, timeout=60)
    assert counts.keys() == set(ids), "the restored broker delivered a message never sent"
    body_of = dict(zip(ids, bodies, strict=True))
    assert all(record.text == body_of[record.message_id] for record in receiver.received)
    # The connections were in the copy too: the original sender still works.
    assert (await restored.send(sender, "sent to the restored broker"))["message_id"]


async def test_a_backup_taken_under_publishing_is_a_consistent_moment(
    start_server: ServerFactory,
    http: aiohttp.ClientSession,
    start_receiver: ReceiverFactory,
    tmp_path: Path,
) -> None:
    server = start_server()
    client = SeedClient(http, server.url)
    sender = await client.connect_sender()
    acknowledged: list[str] = []
    stop = asyncio.Event()

    async def publish() -> None:
        # Bounded: at most 20,000 messages, and the test stops it long before.
        for n in range(20_000):
            if stop.is_set():
                return
            acknowledged.append((await client.send(sender, f"busy {n}"))["message_id"])

    publishers = [asyncio.create_task(publish()) for _ in range(8)]
    try:
        await wait_until(lambda: len(acknowledged) >= 500, 30, "500 published messages")
        before = set(acknowledged)
        result = await mqpy_backup(
            str(tmp_path / "busy.sqlite3"), "--data-dir", str(server.data_dir)
        )
        after = set(acknowledged)
        await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.gather(*publishers)
    # Every send the broker committed has been answered by now.
    everything = set(acknowledged)
    path, _ = result.succeeded()
    assert len(after) > len(before), "nothing was published while the backup ran"

    in_backup = stored_message_ids(path)
    # Every message acknowledged before the backup started is in it, and nothing in it
    # was made up or half-written: it is the store at one moment during the backup.
    assert before <= in_backup, f"{len(before - in_backup)} acknowledged messages missing"
    assert in_backup <= everything, f"{len(in_backup - everything)} messages never acknowledged"

    second = start_server(data_dir=restore(path, tmp_path / "restored"))
    receiver = await start_receiver()
    await SeedClient(http, second.url).connect_receiver(receiver.url, start_at="earliest")
    counts = await wait_for_ids(receiver, in_backup, timeout=60)
    assert counts.keys() == in_backup


async def test_an_existing_directory_gets_a_new_named_file(
    server: ServerProcess, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    client = SeedClient(http, server.url)
    await client.send(await client.connect_sender(), "one")
    first = await mqpy_backup(str(tmp_path), "--data-dir", str(server.data_dir))
    path, size = first.succeeded()
    assert path.parent == tmp_path
    assert re.fullmatch(r"mqpy-backup-\d{8}T\d{6}Z\.sqlite3", path.name), path.name
    assert path.stat().st_size == size
    assert len(stored_message_ids(path)) == 1


async def test_json_output_names_source_path_and_size(
    server: ServerProcess, tmp_path: Path
) -> None:
    dest = tmp_path / "copy.sqlite3"
    result = await mqpy_backup(str(dest), "--data-dir", str(server.data_dir), "--json")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer == {
        "source": str(server.data_dir / DATABASE_FILE),
        "path": str(dest),
        "bytes": dest.stat().st_size,
    }


async def test_the_store_is_found_as_mqpy_serve_finds_it(
    start_server: ServerFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    server = start_server("--store", f"sqlite://{store}")
    client = SeedClient(http, server.url)
    await client.send(await client.connect_sender(), "one")
    by_flag = await mqpy_backup(str(tmp_path / "a.sqlite3"), "--store", f"sqlite://{store}")
    by_env = await mqpy_backup(str(tmp_path / "b.sqlite3"), env=clean_env(MQPY_STORE=str(store)))
    for finished in (by_flag, by_env):
        path, _ = finished.succeeded()
        assert len(stored_message_ids(path)) == 1


async def test_a_postgresql_store_is_for_pg_dump(tmp_path: Path) -> None:
    store = "postgresql://mq:hunter2@db.internal:5432/mqpy"
    by_flag = await mqpy_backup(str(tmp_path / "copy"), "--store", store)
    by_env = await mqpy_backup(str(tmp_path / "copy"), env=clean_env(MQPY_STORE=store))
    for finished in (by_flag, by_env):
        assert finished.returncode == 2, finished.stderr
        [line] = finished.stderr.strip().splitlines()
        assert "pg_dump --format=custom --file=mqpy.dump" in line, line
        assert "'postgresql://mq:***@db.internal:5432/mqpy'" in line, line
        assert "hunter2" not in line
    assert not (tmp_path / "copy").exists()
    assert leftovers(tmp_path) == []


async def test_a_store_that_is_no_store_is_a_usage_error(tmp_path: Path) -> None:
    result = await mqpy_backup(str(tmp_path / "copy"), "--store", "mysql://db/x")
    assert result.returncode == 2
    assert "sqlite:///abs/path" in result.stderr and "postgresql://" in result.stderr
    assert not (tmp_path / "copy").exists()
    assert leftovers(tmp_path) == []


async def test_a_missing_store_is_an_error_and_no_store_is_created(tmp_path: Path) -> None:
    data_dir = tmp_path / "nothing-here"
    result = await mqpy_backup(str(tmp_path / "copy.sqlite3"), "--data-dir", str(data_dir))
    assert result.returncode == 1
    assert f"no mq-py store at {data_dir / DATABASE_FILE}" in result.stderr
    assert "--data-dir" in result.stderr
    assert not data_dir.exists()
    assert not (tmp_path / "copy.sqlite3").exists()


async def test_a_destination_inside_the_data_directory_is_refused(
    server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    client = SeedClient(http, server.url)
    sender = await client.connect_sender()
    await client.send(sender, "kept")
    live = server.data_dir / DATABASE_FILE
    for dest in (live, server.data_dir / "copy.sqlite3", server.data_dir):
        result = await mqpy_backup(str(dest), "--data-dir", str(server.data_dir))
        assert result.returncode == 1, (dest, result.stdout)
        assert "refusing to write the backup into the data directory" in result.stderr
    assert not (server.data_dir / "copy.sqlite3").exists()
    assert leftovers(server.data_dir) == []
    await client.send(sender, "the store is unharmed")


async def test_a_copy_that_fails_the_integrity_check_replaces_nothing(tmp_path: Path) -> None:
    # A store whose table and index disagree: the backup API copies the pages as they
    # are, and PRAGMA integrity_check on the copy must catch it.
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    database = data_dir / DATABASE_FILE
    connection = sqlite3.connect(database)
    connection.execute("CREATE TABLE messages (id TEXT)")
    connection.execute("CREATE INDEX messages_by_id ON messages (id)")
    connection.executemany(
        "INSERT INTO messages VALUES (?)", [(f"msg-{n:06d}",) for n in range(2000)]
    )
    connection.commit()
    connection.close()
    raw = database.read_bytes()
    # Change one copy of it (in the table or in the index): they no longer agree.
    offset = raw.index(b"msg-001234")
    database.write_bytes(raw[:offset] + b"msg-XXXXXX" + raw[offset + 10 :])

    dest = tmp_path / "backup.sqlite3"
    dest.write_text("the previous good backup")
    result = await mqpy_backup(str(dest), "--data-dir", str(data_dir))
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "integrity_check" in result.stderr
    assert "nothing was written" in result.stderr
    assert dest.read_text() == "the previous good backup"
    assert leftovers(tmp_path) == []
