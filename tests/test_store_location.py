"""What `--store` (and `MQPY_STORE`) accepts, and how a store shows in logs.

The server's own use of it (the store it opens, the log line, exit codes) is tested
end to end in tests/test_cli.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from mqpy.config import DEFAULT_DATA_DIR, Settings
from mqpy.model.errors import StoreCannotOpen
from mqpy.store import SQLiteStore, StoreLocation, open_store, redact


def test_the_default_data_dir_is_the_settings_default() -> None:
    assert Settings().data_dir == DEFAULT_DATA_DIR == Path("mqpy-data")


@pytest.mark.parametrize("store", [None, "", "   "])
def test_no_store_is_sqlite_in_the_data_dir(store: str | None, tmp_path: Path) -> None:
    assert StoreLocation.parse(store) == StoreLocation("sqlite", "mqpy-data")
    assert StoreLocation.parse(store, tmp_path) == StoreLocation("sqlite", str(tmp_path))


@pytest.mark.parametrize(
    ("store", "directory"),
    [
        ("/var/lib/mqpy", "/var/lib/mqpy"),
        ("relative/dir", "relative/dir"),
        ("./a=b", "./a=b"),
        ("sqlite:///var/lib/mqpy", "/var/lib/mqpy"),
        ("SQLite:///var/lib/mqpy", "/var/lib/mqpy"),
        ("sqlite:relative/dir", "relative/dir"),
        ("sqlite:/var/lib/mqpy", "/var/lib/mqpy"),
    ],
)
def test_paths_and_sqlite_urls_name_a_sqlite_directory(store: str, directory: str) -> None:
    location = StoreLocation.parse(store)
    assert location == StoreLocation("sqlite", directory)
    assert str(location) == f"sqlite:{directory}"
    # What the log shows reads back as the same store.
    assert StoreLocation.parse(str(location)) == location


@pytest.mark.parametrize(
    ("store", "dsn"),
    [
        ("postgresql://mq@db.internal:5432/mqpy", "postgresql://mq@db.internal:5432/mqpy"),
        ("postgres://db/mqpy?sslmode=require", "postgres://db/mqpy?sslmode=require"),
        ("postgresql://", "postgresql://"),  # everything from PG* variables
        ("PostgreSQL://db/mqpy", "postgresql://db/mqpy"),  # libpq knows lower case only
        ("postgresql://mq@h1:5432,h2:5432/mqpy", "postgresql://mq@h1:5432,h2:5432/mqpy"),
        ("host=db dbname=mqpy user=mq", "host=db dbname=mqpy user=mq"),
        ("dbname = mqpy", "dbname = mqpy"),
    ],
)
def test_urls_and_conninfo_name_a_postgresql_database_verbatim(store: str, dsn: str) -> None:
    assert StoreLocation.parse(store) == StoreLocation("postgresql", dsn)


@pytest.mark.parametrize(
    ("store", "reason"),
    [
        ("mysql://x", "mq-py has no mysql:// store"),
        ("MySQL://root:hunter2@db/x", "mq-py has no mysql:// store"),
        ("sqlite://", "names no directory"),
        ("sqlite:", "names no directory"),
        ("sqlite:///", "names no directory"),
        ("sqlite://host/dir", "no host"),
        ("postgresql:db", "starts with postgresql://"),
        ("memory:", "no store in memory alone"),
        ("memory://", "no store in memory alone"),
    ],
)
def test_anything_else_is_refused_naming_what_is_accepted(store: str, reason: str) -> None:
    with pytest.raises(StoreCannotOpen) as refused:
        StoreLocation.parse(store)
    message = str(refused.value)
    assert "\n" not in message
    assert reason in message
    for accepted in ("sqlite:///abs/path", "postgresql://", "host=... dbname=..."):
        assert accepted in message
    assert "hunter2" not in message


def test_store_and_data_dir_that_name_the_same_directory_agree(tmp_path: Path) -> None:
    location = StoreLocation.parse(f"sqlite://{tmp_path}/x", tmp_path / "x")
    assert location == StoreLocation("sqlite", f"{tmp_path}/x")
    assert StoreLocation.parse(f"{tmp_path}/x/", tmp_path / "x").is_directory(tmp_path / "x")


@pytest.mark.parametrize("store", ["sqlite:///elsewhere", "postgresql://mq:hunter2@db/mqpy"])
def test_store_and_a_data_dir_that_disagree_are_refused(store: str, tmp_path: Path) -> None:
    with pytest.raises(StoreCannotOpen) as refused:
        StoreLocation.parse(store, tmp_path)
    message = str(refused.value)
    assert "--store" in message and "--data-dir" in message and str(tmp_path) in message
    assert "two different stores" in message
    assert "hunter2" not in message


def test_a_data_dir_left_at_its_default_never_disagrees() -> None:
    assert StoreLocation.parse("postgresql://db/mqpy", DEFAULT_DATA_DIR).backend == "postgresql"


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://mq:hunter2@db:5432/mqpy", "postgresql://mq:***@db:5432/mqpy"),
        ("postgres://mq:hunter2@db", "postgres://mq:***@db"),
        ("postgresql://mq@db:5432/mqpy", "postgresql://mq@db:5432/mqpy"),
        ("postgresql://db:5432/mqpy", "postgresql://db:5432/mqpy"),
        ("postgresql://mq:hun@ter?2@db/mqpy", "postgresql://mq:***@db/mqpy"),
        ("postgresql://mq:%40hunter2@db/mqpy", "postgresql://mq:***@db/mqpy"),
        ("postgresql://:hunter2@db/mqpy", "postgresql://:***@db/mqpy"),
        (
            "postgresql://db/mqpy?user=mq&password=hunter2&sslmode=require",
            "postgresql://db/mqpy?user=mq&password=***&sslmode=require",
        ),
        ("postgresql://db/mqpy?sslpassword=hunter2", "postgresql://db/mqpy?sslpassword=***"),
        ("host=db password=hunter2 dbname=mqpy", "host=db password=*** dbname=mqpy"),
        ("host=db password = hunter2", "host=db password = ***"),
        ("host=db password='hunter 2\\' x' user=mq", "host=db password=*** user=mq"),
        ("host=db PASSWORD=hunter2", "host=db PASSWORD=***"),
        ("host=db options='-c a=b' password=hunter2", "host=db options='-c a=b' password=***"),
        ("host=db options='x://y' password=hunter2", "host=db options='x://y' password=***"),
    ],
)
def test_passwords_are_redacted(dsn: str, shown: str) -> None:
    assert redact(dsn) == shown
    location = StoreLocation.parse(dsn)
    assert str(location) == shown
    assert "hunter" not in repr(location)
    assert "hunter" not in f"{location}"


def test_open_store_gives_a_sqlite_store_for_a_directory(tmp_path: Path) -> None:
    store = open_store(StoreLocation.parse(f"sqlite://{tmp_path}/x"))
    assert isinstance(store, SQLiteStore)
    assert store.data_dir == tmp_path / "x"
    assert not (tmp_path / "x").exists(), "nothing is created before the store is opened"
