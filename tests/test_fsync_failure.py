"""A failing fsync (EIO, injected with an LD_PRELOAD shim) and what survives a crash.

The shim is compiled at run time with the system's C compiler; without one the test is
skipped, saying so, except under CI=true, where a compiler is expected.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import ReceiverFactory, ServerFactory
from tests.support.client import SeedClient
from tests.support.fsync_shim import FsyncFailures, build_shim
from tests.support.load import FAST_RETRIES, received_ids, wait_for_ids

# Slow (`make check` skips it; `make test` runs it): compiles an fsync shim and restarts servers.
pytestmark = pytest.mark.slow


@pytest.fixture
def fsync_failures(tmp_path: Path) -> FsyncFailures:
    shim = build_shim(tmp_path)
    if isinstance(shim, str):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{shim} (CI=true: .ci/run installs a compiler)")
        pytest.skip(shim)
    return FsyncFailures(shim, tmp_path)


async def test_a_publish_refused_for_a_failed_fsync_stays_refused_after_a_crash(
    start_server: ServerFactory,
    http: aiohttp.ClientSession,
    start_receiver: ReceiverFactory,
    fsync_failures: FsyncFailures,
) -> None:
    # A failed COMMIT left its frames in the WAL, checksummed and ending in a commit
    # frame; a crash before the next commit, and the restart's recovery read them back:
    # a publish answered 503 was delivered after all.
    server = start_server(*FAST_RETRIES, env=fsync_failures.env)
    client = SeedClient(http, server.url)
    receiver = await start_receiver()
    await client.connect_receiver(receiver.url)
    sender = await client.connect_sender()
    stored = await client.send(sender, "stored")
    fsync_failures.fail(True)
    status, answer = await client.post("/send", {"id": sender, "body": "refused"})
    assert status == 503, answer
    assert fsync_failures.count > 0, "no fsync failed: the shim did not take"
    server.kill()
    fsync_failures.fail(False)
    server.env = {}
    await asyncio.to_thread(server.restart)
    after = await client.send(sender, "after the restart")
    await wait_for_ids(receiver, [stored["message_id"], after["message_id"]], timeout=30)
    bodies = [record.text for record in receiver.received]
    assert "refused" not in bodies, f"a refused publish was delivered: {bodies}"
    assert len(received_ids(receiver)) == 2, bodies


async def test_not_ready_while_fsync_fails_and_ready_once_it_works(
    start_server: ServerFactory, http: aiohttp.ClientSession, fsync_failures: FsyncFailures
) -> None:
    # Readiness after a failed write probes with a write of its own; that probe rewrote
    # a row as it was, which SQLite skips, so it committed without an fsync and said
    # ready while every publish still failed.
    server = start_server(env=fsync_failures.env)
    client = SeedClient(http, server.url)
    sender = await client.connect_sender()
    fsync_failures.fail(True)
    status, answer = await client.post("/send", {"id": sender, "body": "refused"})
    assert status == 503, answer
    for _ in range(2):  # the first probe must not make the second one ready
        async with http.get(server.url + "/readyz") as response:
            assert response.status == 503, await response.text()
    fsync_failures.fail(False)
    async with http.get(server.url + "/readyz") as response:
        assert response.status == 200, await response.text()
    await client.send(sender, "stored again")


@pytest.mark.one_process  # /readyz must reach the process whose publish failed
async def test_acknowledgements_while_fsync_fails_do_not_make_the_store_ready(
    start_server: ServerFactory,
    http: aiohttp.ClientSession,
    start_receiver: ReceiverFactory,
    fsync_failures: FsyncFailures,
) -> None:
    # An ack commits without an fsync, so it succeeds while every fsync fails; it
    # cleared the failure, and /readyz said ready again (torture/fsync.py saw it).
    server = start_server(*FAST_RETRIES, env=fsync_failures.env)
    client = SeedClient(http, server.url)
    receiver = await start_receiver()
    await client.connect_receiver(receiver.url)
    sender = await client.connect_sender()
    # Stored now, delivered (and acknowledged) once the fsyncs fail.
    delayed = []
    for n in range(3):
        status, answer = await client.post(
            "/send", {"id": sender, "body": f"later {n}", "delay_seconds": 1.5}
        )
        assert status == 200, answer
        delayed.append(answer["message_id"])
    fsync_failures.fail(True)
    status, answer = await client.post("/send", {"id": sender, "body": "refused"})
    assert status == 503, answer
    await wait_for_ids(receiver, delayed, timeout=30)
    await asyncio.sleep(0.5)  # their acks commit meanwhile
    async with http.get(server.url + "/readyz") as response:
        assert response.status == 503, await response.text()
    fsync_failures.fail(False)
    async with http.get(server.url + "/readyz") as response:
        assert response.status == 200, await response.text()
