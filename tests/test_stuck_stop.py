"""A stop that cannot finish still ends the process: its store stops answering (a
PostgreSQL server frozen as behind a network partition), so the graceful stop waits on
queries that never return. The process exits with status 70 after its deadline, or
soon after a second signal, and logs what it was waiting on. Nobody else may be left
to kill it: a `--processes` group's supervisor that was itself killed."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator

import pytest

from mqpy.runtime.stopping import FORCED_STOP_SECONDS, STUCK_EXIT_CODE, stop_timeout
from tests.conftest import ServerFactory
from tests.support.postgres import PostgresCluster, throwaway_cluster
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow

GRACE = 1.0


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[PostgresCluster]:
    """A PostgreSQL server of this module's own: freezing the session's one would
    stall every other test using it."""
    with throwaway_cluster() as cluster:
        yield cluster


def started_on(start_server: ServerFactory, cluster: PostgresCluster) -> ServerProcess:
    server = start_server("--store", cluster.create_database(), "--shutdown-grace", f"{GRACE:g}")
    server.wait_for_log("resuming: ")  # its last store query before it serves
    return server


def test_a_stop_stuck_on_a_frozen_store_ends_at_its_deadline(
    start_server: ServerFactory, own_cluster: PostgresCluster
) -> None:
    server = started_on(start_server, own_cluster)
    with own_cluster.frozen():
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        code = server.wait_exit(timeout=stop_timeout(GRACE) + 15)
        took = time.monotonic() - started
    assert code == STUCK_EXIT_CODE, server.log
    assert took >= stop_timeout(GRACE) - 0.5, took  # not before the deadline
    assert "the stop did not finish in time" in server.log
    # Where it was stuck, to find out why: our own code's places, by file and line.
    assert re.search(r"Still waiting: .*mqpy/\w+/\w+\.py:\d+", server.log), server.log


def test_a_second_signal_ends_a_stuck_stop_soon(
    start_server: ServerFactory, own_cluster: PostgresCluster
) -> None:
    server = started_on(start_server, own_cluster)
    with own_cluster.frozen():
        server.signal(signal.SIGTERM)
        server.wait_for_log("shutting down")
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        code = server.wait_exit(timeout=stop_timeout(GRACE) + 15)
        took = time.monotonic() - started
    assert code == STUCK_EXIT_CODE, server.log
    assert took < FORCED_STOP_SECONDS + 3, took  # well before the first deadline
    assert "the stop did not finish in time" in server.log
