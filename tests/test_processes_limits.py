"""A `--processes` group keeps three limits as one broker would: a key's publish rate,
a receiver's max_per_second, and a failing receiver's pause and probe (kept in the
table the group shares, core/group_state.py). Real processes, real receivers."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import ReceiverFactory, ServerFactory
from tests.support.receiver import Crowd
from tests.test_processes import established_by, start_processes, store, subscribe

__all__ = ["store"]  # the fixture, shared with test_processes.py

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not sys.platform.startswith("linux"), reason="reads sockets and processes from /proc"
    ),
]


async def test_one_kept_alive_client_gets_the_whole_publish_rate_of_the_group(
    start_server: ServerFactory, store: str
) -> None:
    server, pids = start_processes(
        start_server, store, 2, "--publish-rate", "20", "--publish-burst", "20"
    )
    accepted = 0
    refused: list[str] = []
    # One connection, kept alive: one process of the two answers every request.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
        async with http.get(f"{server.url}/healthz") as answer:
            assert answer.status == 200
        assert sorted(established_by(pids, server.port).values()) == [0, 1]
        until = time.monotonic() + 3.0
        while time.monotonic() < until:
            async with http.post(
                f"{server.url}/v1/topics/t/messages", json={"body": "m"}
            ) as answer:
                if answer.status == 201:
                    accepted += 1
                else:
                    assert answer.status == 429, await answer.text()
                    refused.append((await answer.json())["detail"])
            await asyncio.sleep(0.01)
    # The burst (20) and 3 s at 20 a second: 80; a process keeping half would allow 40.
    assert 65 <= accepted <= 95, accepted
    assert refused, "nothing was refused"
    assert "this key may publish 20 messages per second (--publish-rate); retry in" in refused[0]


def holds_a_write_lock(pid: int) -> bool:
    """Whether `pid` holds an exclusive file lock: the store's write turn, SQLite's
    own write locks, or the group's shared table (/proc/locks, Linux)."""
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields:  # a waiter, not a holder
            continue
        if len(fields) > 4 and fields[3] == "WRITE" and fields[4] == str(pid):
            return True
    return False


def stop_between_turns(pid: int) -> None:
    """SIGSTOP `pid` at a moment it holds no exclusive lock: stopped inside its write
    turn, it would hold up the other process too, which is not what is measured."""
    for _ in range(200):
        os.kill(pid, signal.SIGSTOP)
        time.sleep(0.01)  # the signal is taken
        if not holds_a_write_lock(pid):
            return
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.005)
    raise AssertionError(f"process {pid} held an exclusive lock at every try")


# How the publisher reaches the group: over 16 connections (both processes publish
# and are woken), over one (one process publishes), or over one with the other process
# stopped (SIGSTOP) while the pace is measured, so one process alone claims.
@pytest.mark.parametrize("how", ["spread", "one", "one-claiming"])
async def test_a_receivers_max_per_second_is_the_groups_whoever_claims(
    start_server: ServerFactory, start_receiver: ReceiverFactory, store: str, how: str
) -> None:
    server, pids = start_processes(start_server, store, 2)
    receiver = await start_receiver()
    connections = 16 if how == "spread" else 1
    sessions = [
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) for _ in range(connections)
    ]
    stopped: int | None = None
    try:
        await subscribe(sessions[0], server.url, receiver.url, max_per_second=10)

        async def publish(session: aiohttp.ClientSession, first: int) -> None:
            for n in range(first, 150, connections):
                url = f"{server.url}/v1/topics/t/messages"
                async with session.post(url, json={"body": f"m{n}"}) as answer:
                    assert answer.status == 201, await answer.text()

        await asyncio.gather(*(publish(session, n) for n, session in enumerate(sessions)))
        held = established_by(pids, server.port)
        assert all(held.values()) if how == "spread" else sorted(held.values()) == [0, 1], held
        if how == "one-claiming":
            stopped = min(pid for pid, count in held.items() if count == 0)
            stop_between_turns(stopped)
        # Past the first second's bucket (and what the stopped process had claimed).
        start = time.monotonic() + 1.5
        await asyncio.sleep(start + 4.0 - time.monotonic())
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        for session in sessions:
            await session.close()
    # 10 a second for the group over 4 s; a process keeping to half would give 20 alone.
    steady = [r.at for r in receiver.received if start <= r.at < start + 4.0]
    assert 32 <= len(steady) <= 48, len(steady)
    assert len({r.message_id for r in receiver.received}) == len(receiver.received)


async def test_a_failing_receiver_is_probed_by_one_process_of_the_group_at_a_time(
    start_server: ServerFactory, start_receiver: ReceiverFactory, store: str
) -> None:
    server, _ = start_processes(
        start_server, store, 2, "--max-attempts", "1000", "--delivery-timeout", "5s"
    )
    # Answers 503 after 0.3 s: two attempts at once would overlap there.
    failing = Crowd(0.3, status=503)
    receiver = await start_receiver(failing)
    async with aiohttp.ClientSession() as http:
        await subscribe(http, server.url, receiver.url)
        for n in range(6):
            async with http.post(f"{server.url}/v1/topics/t/messages", json={"body": f"m{n}"}) as a:
                assert a.status == 201, await a.text()
    await receiver.wait_for_attempts(1, timeout=30)
    # Both processes send at first, their windows shrinking to one each, until eight
    # failures in a row pause the receiver (2.4 s at 0.3 s each, and the shrinking).
    await asyncio.sleep(receiver.attempts[0].at + 5.0 - time.monotonic())
    failing.reset()
    answered = failing.answered
    await asyncio.sleep(5.0)
    # Paused for the group: one probe at a time, and probes still go.
    assert failing.peak == 1, failing.peak
    assert failing.answered - answered >= 3, failing.answered - answered
    # Back: every message arrives.
    failing.delay, failing.status = 0.0, 204
    await receiver.wait_until(lambda: len({r.message_id for r in receiver.received}) == 6, 30)
