"""`mqpy serve --processes N`: N real broker processes on one port and one store
(a SQLite data directory, or a PostgreSQL database), under a real supervisor process.

Which process holds which socket is read from /proc, as `ss -ltnp` would: a process
serves the port when it holds a listening socket on it, and a connection went to the
process that holds its accepted end.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from mqpy.runtime import supervisor
from mqpy.runtime.supervisor import Supervisor
from tests.conftest import ReceiverFactory, ServerFactory
from tests.support.client import SeedClient
from tests.support.receiver import Crowd
from tests.support.server import ServerProcess

# Slow (`make check` skips it; `make test` runs it): starts process groups and kills their children.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not sys.platform.startswith("linux"), reason="reads sockets and processes from /proc"
    ),
]

PYTHON_M = [sys.executable, "-m", "mqpy"]
FAST_RETRIES = ("--retry-base", "0.05", "--retry-max", "0.5")
_LISTEN, _ESTABLISHED = "0A", "01"  # socket states in /proc/net/tcp


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def children_of(pid: int) -> set[int]:
    """Live (not zombie) processes whose parent is `pid`."""
    found: set[int] = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it exited while we looked
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def sockets_on(port: int, state: str) -> set[int]:
    """Inodes of TCP sockets in `state` whose local port is `port`."""
    inodes: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:
                inodes.add(int(fields[9]))
    return inodes


def sockets_of(pid: int) -> set[int]:
    inodes: set[int] = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def started_pid(server: ServerProcess) -> int:
    """The pid of the `mqpy serve` this test started with `--port server.port`."""
    for pid in children_of(os.getpid()):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in command and str(server.port).encode() in command:
            return pid
    raise AssertionError(f"no mqpy serve on port {server.port} among this test's children")


def serving(server: ServerProcess, count: int, timeout: float = 30.0) -> set[int]:
    """The pids of the `count` children of `server` once each listens on its port."""
    parent = started_pid(server)
    deadline = time.monotonic() + timeout
    while True:
        listening = sockets_on(server.port, _LISTEN)
        children = children_of(parent)
        if len(children) == count and all(sockets_of(c) & listening for c in children):
            return children
        if time.monotonic() > deadline:
            raise AssertionError(f"children {children} of {parent}, log:\n{server.log}")
        time.sleep(0.1)


def serving_without(server: ServerProcess, gone: int, count: int) -> set[int]:
    """The pids of `count` children serving, once `gone` is not one of them."""
    deadline = time.monotonic() + 30
    while gone in (now := serving(server, count)):
        assert time.monotonic() < deadline, server.log
        time.sleep(0.1)
    return now


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest) -> str:
    """What a group of processes shares: "" for the server's own SQLite data
    directory, or a fresh PostgreSQL database's URL."""
    if request.param == "sqlite":
        return ""
    return str(request.getfixturevalue("postgres_url"))


def start_processes(
    start_server: ServerFactory, store: str, count: int, *args: str
) -> tuple[ServerProcess, set[int]]:
    port = free_port()
    where = ("--store", store) if store else ()
    # The last --port wins: ServerProcess gives --port 0, which N processes cannot share.
    server = start_server(
        *where, "--processes", str(count), *FAST_RETRIES, *args, "--port", str(port)
    )
    assert server.port == port
    return server, serving(server, count)


def run_serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PYTHON_M, "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


async def publish_over_connections(url: str, bodies: list[str], connections: int) -> list[str]:
    """Publish `bodies` over `connections` TCP connections of their own, each with a
    sender connected through it; the message ids."""
    sessions = [
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) for _ in range(connections)
    ]
    try:
        clients = [SeedClient(session, url) for session in sessions]
        senders = [await client.connect_sender() for client in clients]
        shares = [bodies[i::connections] for i in range(connections)]

        async def publish(client: SeedClient, sender: int, share: list[str]) -> list[str]:
            return [str((await client.send(sender, body))["message_id"]) for body in share]

        runs = await asyncio.gather(
            *(publish(*job) for job in zip(clients, senders, shares, strict=True))
        )
        return [message_id for run in runs for message_id in run]
    finally:
        for session in sessions:
            await session.close()


def established_by(pids: set[int], port: int) -> dict[int, int]:
    """How many accepted connections on `port` each of `pids` holds."""
    accepted = sockets_on(port, _ESTABLISHED)
    return {pid: len(sockets_of(pid) & accepted) for pid in pids}


async def test_two_processes_share_one_port_and_deliver_every_publish_once(
    start_server: ServerFactory, start_receiver: ReceiverFactory, store: str
) -> None:
    server, pids = start_processes(start_server, store, 2, "--log-format", "json")
    assert len(pids) == 2 and started_pid(server) not in pids
    receiver = await start_receiver()
    async with aiohttp.ClientSession() as http:
        await SeedClient(http, server.url).connect_receiver(receiver.url)
    # A receiver connected through one node is in force on all of them within a second.
    await asyncio.sleep(1.5)

    # 16 connections, all kept open at once: the kernel spreads them over both processes
    # (all 16 on one of two would happen once in 30,000 runs).
    sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) for _ in range(16)]
    try:
        clients = [SeedClient(session, server.url) for session in sessions]
        senders = [await client.connect_sender() for client in clients]
        held = established_by(pids, server.port)
        assert all(held.values()), held

        async def publish(client: SeedClient, sender: int, first: int) -> list[str]:
            answers = [await client.send(sender, f"m{i:03d}") for i in range(first, 500, 16)]
            return [str(answer["message_id"]) for answer in answers]

        runs = await asyncio.gather(
            *(publish(c, s, i) for i, (c, s) in enumerate(zip(clients, senders, strict=True)))
        )
    finally:
        for session in sessions:
            await session.close()
    published = {message_id for run in runs for message_id in run}
    assert len(published) == 500

    await receiver.wait_for(500, timeout=60)
    await asyncio.sleep(0.5)  # anything sent twice would have arrived by now
    delivered = Counter(r.message_id for r in receiver.received)
    assert set(delivered) == published
    assert set(delivered.values()) == {1}
    assert sorted(str(r.text) for r in receiver.received) == [f"m{i:03d}" for i in range(500)]

    # Every line is JSON, and a node's lines say which process wrote them.
    entries = [json.loads(line) for line in server.lines]
    slots = {(e["process_slot"], e["pid"]) for e in entries if "process_slot" in e}
    assert {pid for _, pid in slots} == pids
    assert {slot for slot, _ in slots} == {"1/2", "2/2"}
    assert any(e["message"] == f"starting 2 processes on 127.0.0.1:{server.port}" for e in entries)


async def test_a_subscriptions_max_concurrency_holds_for_the_whole_group(
    start_server: ServerFactory, start_receiver: ReceiverFactory, store: str
) -> None:
    server, pids = start_processes(start_server, store, 2)
    crowd = Crowd(delay=0.2)
    receiver = await start_receiver(crowd)
    # 16 connections: all on one process would happen once in 30,000 runs.
    sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) for _ in range(16)]
    try:
        made = await sessions[0].post(
            f"{server.url}/v1/subscriptions",
            json={"url": receiver.url, "topic": "t", "max_concurrency": 1},
        )
        assert made.status == 201, await made.text()
        await asyncio.sleep(1.5)  # in force on both processes
        for session in sessions:  # each opens its connection, kept alive
            async with session.get(f"{server.url}/healthz") as answer:
                assert answer.status == 200
        held = established_by(pids, server.port)
        assert all(held.values()), held  # both processes take publishes, and claim

        async def publish(session: aiohttp.ClientSession, n: int) -> None:
            url = f"{server.url}/v1/topics/t/messages"
            async with session.post(url, json={"body": f"m{n}"}) as answer:
                assert answer.status == 201, await answer.text()

        await asyncio.gather(*(publish(session, n) for n, session in enumerate(sessions)))
    finally:
        for session in sessions:
            await session.close()
    await receiver.wait_for(16, timeout=60)
    # Each process alone would let one through at a time: two at once, together.
    assert crowd.peak == 1


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_stops_every_process_and_exits_0(
    start_server: ServerFactory, store: str, stop: signal.Signals
) -> None:
    server, pids = start_processes(start_server, store, 2)
    os.kill(started_pid(server), stop)
    deadline = time.monotonic() + 30
    while server.running:
        assert time.monotonic() < deadline, server.log
        time.sleep(0.1)
    assert server.terminate() == 0  # it has exited: this only reads its status
    assert not any(alive(pid) for pid in pids)
    log = server.log
    assert f"starting 2 processes on 127.0.0.1:{server.port}" in log
    stopped = re.findall(r"\[process (\d/2), pid (\d+)\]: stopped$", log, re.MULTILINE)
    assert len(stopped) == 2 and {slot for slot, _ in stopped} == {"1/2", "2/2"}, log
    assert {int(pid) for _, pid in stopped} == pids, log
    assert f"{stop.name}: stopping 2 processes" in log
    assert "Traceback" not in log


def test_processes_stop_when_their_supervisor_is_killed(
    start_server: ServerFactory, store: str
) -> None:
    server, pids = start_processes(start_server, store, 2)
    server.kill()
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in pids):
        assert time.monotonic() < deadline, f"{pids} outlived their supervisor"
        time.sleep(0.1)


async def test_a_killed_process_is_replaced_and_service_goes_on(
    start_server: ServerFactory, start_receiver: ReceiverFactory, store: str
) -> None:
    server, pids = start_processes(start_server, store, 2)
    doomed = min(pids)
    os.kill(doomed, signal.SIGKILL)
    now = serving_without(server, doomed, 2)
    assert f"(pid {doomed}) was killed by SIGKILL" in server.log
    replacement = (now - pids).pop()
    assert alive(min(pids - {doomed}))  # the other one was left alone

    receiver = await start_receiver()
    async with aiohttp.ClientSession() as http:
        await SeedClient(http, server.url).connect_receiver(receiver.url)
    await asyncio.sleep(1.5)  # in force on every node within a second
    published = await publish_over_connections(server.url, [f"m{i}" for i in range(100)], 8)
    await receiver.wait_for(100, timeout=30)
    assert {r.message_id for r in receiver.received} == set(published)
    assert server.terminate() == 0
    assert not alive(replacement)


def test_one_process_is_just_the_broker(start_server: ServerFactory) -> None:
    server = start_server("--port", str(free_port()))
    assert children_of(started_pid(server)) == set()
    assert "[process" not in server.log and "starting" not in server.log


def test_a_sqlite_group_holds_its_data_directory_against_other_brokers(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    data = tmp_path / "shared"
    server = start_server("--processes", "2", "--port", str(free_port()), data_dir=data)
    serving(server, 2)
    result = run_serve("--data-dir", str(data), "--port", str(free_port()))
    assert result.returncode == 1
    assert f"another mq-py process is using {data}" in result.stderr
    # A process that claims to be one of a group, without the group's lock, is refused
    # too: the lock it names must be the data directory's.
    with (tmp_path / "elsewhere").open("w") as other:
        result = subprocess.run(
            [*PYTHON_M, "serve", "--data-dir", str(data), "--port", str(free_port())],
            capture_output=True,
            text=True,
            timeout=60,
            env={
                **os.environ,
                supervisor.SLOT_ENV: "3",
                supervisor.DATA_LOCK_ENV: str(other.fileno()),
            },
            pass_fds=(other.fileno(),),
        )
    assert result.returncode == 1
    assert "is not" in result.stderr and "mqpy.lock" in result.stderr
    assert server.terminate() == 0
    # Once the group has stopped, the directory is free.
    alone = start_server("--port", str(free_port()), data_dir=data)
    assert alone.running


async def test_a_sqlite_process_killed_mid_stream_hands_its_work_on_when_its_leases_run_out(
    start_server: ServerFactory, start_receiver: ReceiverFactory
) -> None:
    async def steady(request: web.Request, number: int) -> web.StreamResponse:
        await asyncio.sleep(0.02)
        return web.Response(status=204)

    lease = 8.0
    server, pids = start_processes(
        start_server, "", 2, "--workers", "16",
        "--delivery-timeout", "2s", "--lease-seconds", f"{lease}s",
    )  # fmt: skip
    receiver = await start_receiver(steady)
    async with aiohttp.ClientSession() as http:
        await SeedClient(http, server.url).connect_receiver(receiver.url)
    await asyncio.sleep(1.5)  # in force on every process within a second
    published = await publish_over_connections(server.url, [f"m{i:04d}" for i in range(1500)], 16)
    await receiver.wait_for(200, timeout=30)
    os.kill(min(pids), signal.SIGKILL)
    killed_at = time.monotonic()
    # Every message, counted once: a duplicate (the killed process's last sends) must
    # not stand in for a message still under its lease.
    await receiver.wait_until(
        lambda: len({r.message_id for r in receiver.received}) >= 1500, timeout=lease + 30
    )
    took = time.monotonic() - killed_at
    counts = Counter(r.message_id for r in receiver.received)
    assert set(counts) == set(published)  # nothing acknowledged is lost
    duplicates = sum(counts.values()) - len(counts)
    print(f"{duplicates} duplicates; all in {took:.1f} s")
    # At most what the killed process held: --workers plus --jobs (64 by default).
    assert duplicates <= 16 + 64, duplicates
    assert took <= lease + 5, took


def test_port_0_cannot_be_shared() -> None:
    result = run_serve("--processes", "2", "--store", "postgresql://127.0.0.1:1/x", "--port", "0")
    assert result.returncode == 2
    assert "cannot share port 0" in result.stderr and "give a fixed --port" in result.stderr
    assert "started" not in result.stderr  # no process was started


@pytest.mark.parametrize(
    ("args", "status", "reason"),
    [
        (("--lease-seconds", "1s"), 2, "--lease-seconds 1s is shorter"),
        ((), 1, "cannot reach PostgreSQL"),
    ],
)
def test_processes_that_cannot_start_stop_the_whole_group_with_their_status(
    args: tuple[str, ...], status: int, reason: str
) -> None:
    # Nothing listens on port 1: the store cannot be reached.
    store = "postgresql://127.0.0.1:1/x"
    started = time.monotonic()
    result = run_serve("--processes", "2", "--store", store, "--port", str(free_port()), *args)
    assert result.returncode == status, result.stderr
    assert reason in result.stderr
    assert f"exited with status {status} at startup; stopping the others" in result.stderr
    assert time.monotonic() - started < 20
    assert result.stderr.count("started (pid") == 2  # tried once each, not again


def test_a_crash_loop_backs_off_and_then_gives_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Process 1 dies once it is up, and each replacement fails at once; process 2 stays
    up until told to stop. The supervisor waits longer before each replacement, then
    stops process 2 and exits with the replacements' status."""
    monkeypatch.setattr(supervisor, "FIRST_BACKOFF_SECONDS", 0.05)
    monkeypatch.setattr(supervisor, "POLL_SECONDS", 0.01)
    script = f"""
import os, signal, sys, time
from pathlib import Path
slot = os.environ["{supervisor.SLOT_ENV}"]
starts = Path({str(tmp_path)!r}) / f"starts-{{slot}}"
with starts.open("a") as f:
    f.write(f"{{time.monotonic()}}\\n")
if slot == "2":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    time.sleep(60)
    sys.exit(3)
if len(starts.read_text().splitlines()) == 1:
    os.kill(os.getpid(), signal.SIGKILL)
sys.exit(1)
"""
    caplog.set_level("INFO", logger="mqpy.supervisor")
    started = time.monotonic()
    code = Supervisor([sys.executable, "-c", script], count=2, stop_timeout=10).run()
    assert code == 1
    assert time.monotonic() - started < 10  # process 2 stopped at once on SIGTERM
    restarts = [float(t) for t in (tmp_path / "starts-1").read_text().split()]
    assert len(restarts) == supervisor.MAX_FAILED_STARTS
    gaps = [b - a for a, b in itertools.pairwise(restarts)]
    assert all(later > earlier for earlier, later in itertools.pairwise(gaps)), gaps
    assert len((tmp_path / "starts-2").read_text().split()) == 1
    assert "was killed by SIGKILL" in caplog.text
    assert f"{supervisor.MAX_FAILED_STARTS} starts in a row failed within 5s" in caplog.text


async def test_a_sqlite_group_takes_up_at_once_what_a_killed_broker_had_claimed(
    start_server: ServerFactory, start_receiver: ReceiverFactory, tmp_path: Path
) -> None:
    """Claims left by a broker killed mid-delivery are released when a group starts on
    its data directory, not when their lease (a minute here) runs out."""
    answering = asyncio.Event()
    finished = asyncio.Event()
    hanging = 0

    async def hangs_then_answers(request: web.Request, number: int) -> web.StreamResponse:
        nonlocal hanging
        if not answering.is_set():
            hanging += 1
            await finished.wait()  # answers once the test is over: the broker was killed
        return web.Response(status=204)

    receiver = await start_receiver(hangs_then_answers)
    data = tmp_path / "data"
    lease = ("--lease-seconds", "60s", "--delivery-timeout", "50s")
    alone = start_server(*lease, data_dir=data)
    async with aiohttp.ClientSession() as http:
        client = SeedClient(http, alone.url)
        await client.connect_receiver(receiver.url)
        sender = await client.connect_sender()
        published = {str((await client.send(sender, f"m{i}"))["message_id"]) for i in range(5)}
    deadline = time.monotonic() + 30
    while hanging == 0:  # claimed, and hanging (as many as the receiver's first window)
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    alone.kill()
    answering.set()
    started = time.monotonic()
    server = start_server(*lease, "--processes", "2", "--port", str(free_port()), data_dir=data)
    serving(server, 2)
    await receiver.wait_for(5, timeout=20)
    assert time.monotonic() - started < 20  # well inside the 60 s lease
    assert {r.message_id for r in receiver.received} == published
    finished.set()
