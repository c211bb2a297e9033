"""Start and stop say what is in hand (issue 13), on the real server process and real
signals: the work a start resumes and a stop leaves, whether keys are on, and what a
stop waits for, which a second signal cuts short without losing anything."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiohttp
from aiohttp import web

from tests.conftest import ReceiverFactory, ServerFactory
from tests.support.api import call, ok
from tests.support.client import SeedClient
from tests.support.launcher import run_mqpy_text

ADMIN_KEY = "start-stop-admin-key-1f9a"


def test_the_log_says_when_keys_are_on_and_when_they_are_not(
    start_server: ServerFactory,
) -> None:
    secured = start_server(env={"MQPY_ADMIN_KEY": ADMIN_KEY})
    line = secured.wait_for_log("API keys are on")
    assert "(MQPY_ADMIN_KEY)" in line and "Authorization: Bearer <key>" in line, line
    assert ADMIN_KEY not in secured.log
    open_server = start_server()
    open_server.wait_for_log("no API key configured: every route is open, on loopback only")
    assert "API keys are on" not in open_server.log


def test_stop_says_what_is_left_and_start_what_it_resumes(start_server: ServerFactory) -> None:
    server = start_server()
    server.wait_for_log("resuming: queue length 0 ")
    # A paused subscription's messages wait for it (one nobody takes is done at once).
    paused = {"url": "http://127.0.0.1:9/later", "topic": "later", "paused": True}
    ok(call(server.url, "POST", "/v1/subscriptions", paused), 201)
    for number in range(3):
        ok(call(server.url, "POST", "/v1/topics/later/messages", {"body": f"m{number}"}), 201)
    assert server.terminate() == 0
    left = server.wait_for_log("left for the next start")
    assert "queue length 3 " in left and "0 dead letters" in left, left
    server.lines.clear()
    server.restart()
    resumed = server.wait_for_log("resuming:")
    assert "queue length 3 " in resumed, resumed


async def test_a_second_signal_stops_at_once_and_loses_nothing(
    start_server: ServerFactory, start_receiver: ReceiverFactory, http: aiohttp.ClientSession
) -> None:
    server = start_server("--shutdown-grace", "300", "--retry-base", "0.05")
    client = SeedClient(http, server.url)
    answered = asyncio.Event()

    async def hangs_first(request: web.Request, number: int) -> web.StreamResponse:
        if number == 1:  # a slow receiver: the first delivery is in flight at the stop
            async with asyncio.timeout(60):
                await answered.wait()
        return web.Response(status=204)

    receiver = await start_receiver(hangs_first)
    await client.connect_receiver(receiver.url)
    sent = await client.send(await client.connect_sender(), "in flight at the stop")
    try:
        await receiver.wait_for_attempts(1)
        server.signal(signal.SIGINT)
        waiting = await asyncio.to_thread(server.wait_for_log, "waiting up to")
        assert "waiting up to 300 s for 1 deliveries in flight to 1 receivers" in waiting
        server.signal(signal.SIGINT)
        assert await asyncio.to_thread(server.wait_exit, 30) == 0
        assert "SIGINT again: stopping now" in server.log
        assert "left for the next start: queue length 1 " in server.log
        server.lines.clear()
        await asyncio.to_thread(server.restart)
        (again,) = await receiver.wait_for(1)
    finally:
        answered.set()
    assert again.message_id == sent["message_id"]
    assert again.headers["mq-attempt"] == "2"  # the cut-short attempt counted


def test_a_port_in_use_stops_what_started_and_exits_1(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    """A failed listen unwinds the parts already started, as a stop does: the process
    exits 1 at once, leaves no task or connection pool behind, and its store opens
    again (the lock released)."""
    running = start_server()
    data_dir = tmp_path / "second"
    command = ["serve", "--data-dir", str(data_dir), "--port", str(running.port)]
    result = run_mqpy_text(command, os.environ, timeout=60)
    assert result.returncode == 1, result.stderr
    assert f"cannot listen on 127.0.0.1:{running.port}" in result.stderr
    for leftover in ("Unclosed", "Task was destroyed", "Traceback"):
        assert leftover not in result.stderr, result.stderr
    again = start_server(data_dir=data_dir)
    again.wait_for_log("resuming:")
