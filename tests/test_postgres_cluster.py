"""The throwaway PostgreSQL the PostgreSQL store's tests run against: each test gets an
empty database of its own at a URL that survives a restart and a crash of the server.

Checked with the cluster's own psql, as a client would connect: no Python driver.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.support.postgres import PostgresCluster

# Slow (`make check` skips it; `make test` runs it): starts PostgreSQL-backed nodes and kills them.
pytestmark = pytest.mark.slow

# The databases earlier tests of this module were given, to check they are gone.
_given: set[str] = set()


def sql(cluster: PostgresCluster, url: str, statement: str) -> list[str]:
    """Run one statement at `url` with psql; the rows, one line each."""
    result = subprocess.run(
        [
            str(cluster.bin_dir / "psql"),
            "--no-psqlrc",
            "--quiet",
            "--tuples-only",
            "--no-align",
            "--set=ON_ERROR_STOP=1",
            f"--dbname={url}",
            f"--command={statement}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def database_names(cluster: PostgresCluster) -> set[str]:
    return set(sql(cluster, cluster.url(), "SELECT datname FROM pg_database"))


@pytest.mark.parametrize("turn", ["first", "second"])
def test_each_test_gets_an_empty_database_of_its_own(
    postgres_cluster: PostgresCluster, postgres_empty_url: str, turn: str
) -> None:
    name = postgres_empty_url.rsplit("/", 1)[1]
    assert postgres_empty_url == f"postgresql://postgres@127.0.0.1:{postgres_cluster.port}/{name}"
    assert name not in _given
    assert not _given & database_names(postgres_cluster), "an earlier test's database is left"
    tables = "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace"
    assert sql(postgres_cluster, postgres_empty_url, tables) == ["0"]
    # Leave something behind: the other turn must not see it.
    sql(postgres_cluster, postgres_empty_url, f"CREATE TABLE left_by_{turn} (x int)")
    _given.add(name)


def test_runs_with_fast_but_honest_commit_settings(
    postgres_cluster: PostgresCluster, postgres_url: str
) -> None:
    settings = (
        "SELECT current_setting('fsync'), current_setting('synchronous_commit'), "
        "current_setting('max_connections'), current_setting('server_encoding')"
    )
    assert sql(postgres_cluster, postgres_url, settings) == ["off|on|300|UTF8"]


def test_restart_keeps_the_url_and_the_data(
    postgres_cluster: PostgresCluster, postgres_url: str
) -> None:
    sql(postgres_cluster, postgres_url, "CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)")
    port = postgres_cluster.port

    postgres_cluster.restart()

    assert postgres_cluster.port == port
    assert sql(postgres_cluster, postgres_url, "SELECT x FROM kept") == ["7"]


def test_a_killed_server_starts_again_with_every_commit(
    postgres_cluster: PostgresCluster, postgres_url: str
) -> None:
    sql(postgres_cluster, postgres_url, "CREATE TABLE kept (x int); INSERT INTO kept VALUES (1)")
    # A client in the middle of a statement: its backend must go with the postmaster.
    busy = subprocess.Popen(
        [
            str(postgres_cluster.bin_dir / "psql"),
            "--no-psqlrc",
            postgres_url,
            "-c",
            "SELECT pg_sleep(60)",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_for_backend(postgres_cluster, postgres_url)
        postgres_cluster.kill()
        assert not postgres_cluster.running()
        assert busy.wait(timeout=10) != 0, "the client's statement outlived the server"
    finally:
        busy.kill()
        busy.wait()

    postgres_cluster.start()

    assert sql(postgres_cluster, postgres_url, "SELECT x FROM kept") == ["1"]


def wait_for_backend(cluster: PostgresCluster, url: str, timeout: float = 10.0) -> None:
    sleeping = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%'"
    deadline = time.monotonic() + timeout
    while sql(cluster, url, sleeping) != ["1"]:
        assert time.monotonic() < deadline, "psql's pg_sleep never started"
        time.sleep(0.05)


def test_postgres_url_holds_the_schema_and_no_rows(
    postgres_cluster: PostgresCluster, postgres_url: str
) -> None:
    counts = "SELECT (SELECT count(*) FROM messages) + (SELECT count(*) FROM subscriptions)"
    assert sql(postgres_cluster, postgres_url, counts) == ["0"]
