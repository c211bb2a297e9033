"""Logs through the real server: human lines by default; with --log-format json (or
MQPY_LOG_FORMAT=json) one JSON object per line, and exactly one line per failed
delivery attempt naming the receiver, the attempt and the reason, never the body."""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import ReceiverFactory, ServerFactory
from tests.support.client import SeedClient
from tests.support.launcher import run_mqpy_text
from tests.support.server import ServerProcess

_LISTENING = re.compile(r"^listening on (http://\S+)$")


class JsonLogServer(ServerProcess):
    """A server whose stderr is JSON lines: the listening URL is in a `message`."""

    def _read(self, started: threading.Event) -> None:
        assert self._process is not None and self._process.stderr is not None
        for line in self._process.stderr:
            self.lines.append(line)
            try:
                message = json.loads(line).get("message", "")
            except (ValueError, AttributeError):
                continue  # not JSON: the test's assertions will say so
            match = _LISTENING.match(message)
            if match and not started.is_set():
                self.url = match.group(1)
                self.port = int(self.url.rsplit(":", 1)[1])
                started.set()

    def entries(self) -> list[dict[str, Any]]:
        """Every line so far, each of which must be one JSON object."""
        parsed = []
        for line in list(self.lines):
            entry = json.loads(line)
            assert isinstance(entry, dict), line
            for field in ("time", "level", "logger", "message"):
                assert isinstance(entry.get(field), str), (field, line)
            parsed.append(entry)
        return parsed


@pytest.fixture
def json_servers(tmp_path: Path) -> Iterator[list[JsonLogServer]]:
    servers: list[JsonLogServer] = []
    yield servers
    for server in servers:
        server.kill()


def start_json_server(
    servers: list[JsonLogServer], data_dir: Path, *args: str, env: dict[str, str] | None = None
) -> JsonLogServer:
    server = JsonLogServer(data_dir, args, env)
    servers.append(server)
    server.start()
    return server


async def fail_500(request: web.Request, number: int) -> web.StreamResponse:
    return web.Response(status=500)


async def test_json_logs_have_one_line_per_failed_attempt_without_the_body(
    json_servers: list[JsonLogServer],
    tmp_path: Path,
    start_receiver: ReceiverFactory,
    http: aiohttp.ClientSession,
) -> None:
    server = start_json_server(
        json_servers,
        tmp_path / "data",
        *("--log-format", "json", "--retry-base", "0.05", "--retry-max", "0.2"),
        *("--max-attempts", "2"),
    )
    client = SeedClient(http, server.url)
    failing = await start_receiver(fail_500)
    receiver_id = await client.connect_receiver(failing.url)
    sender = await client.connect_sender()
    body = "top secret body 7f3e"
    message_id = (await client.send(sender, body))["message_id"]
    await failing.wait_for_attempts(2)

    def failure_lines() -> list[dict[str, Any]]:
        return [e for e in server.entries() if e.get("receiver_id") == receiver_id]

    deadline = time.monotonic() + 10
    while len(failure_lines()) < 2:
        assert time.monotonic() < deadline, server.log
        await asyncio.sleep(0.05)
    first, last = failure_lines()
    assert [first["attempt"], last["attempt"]] == [1, 2]
    assert [first["outcome"], last["outcome"]] == ["retried", "dead_lettered"]
    assert [first["level"], last["level"]] == ["info", "warning"]
    for line in (first, last):
        assert line["message_id"] == message_id
        assert line["reason"] == "receiver answered HTTP 500"
        assert line["status"] == 500
        assert line["logger"] == "mqpy.delivery"
    assert body not in server.log
    # And no other line speaks of this message's failures.
    mentions = [e for e in server.entries() if message_id in e["message"]]
    assert mentions == [first, last]

    assert server.terminate() == 0
    assert server.entries()[-1]["message"] == "stopped"  # shutdown logs JSON too
    assert len(failure_lines()) == len(failing.attempts) == 2


async def test_json_format_from_the_environment(
    json_servers: list[JsonLogServer], tmp_path: Path
) -> None:
    server = start_json_server(json_servers, tmp_path / "data", env={"MQPY_LOG_FORMAT": "json"})
    assert any(e["message"].startswith("listening on") for e in server.entries())


# A group's lines name their process, `[process 2/4, pid 4242]` (docs/operations.md).
@pytest.mark.one_process
def test_human_lines_by_default(start_server: ServerFactory) -> None:
    server = start_server()
    assert re.search(r" INFO mqpy\.server: listening on http://", server.log), server.log
    with pytest.raises(ValueError):
        json.loads(server.lines[0])


def test_an_unknown_log_format_is_refused(tmp_path: Path) -> None:
    command = ["serve", "--data-dir", str(tmp_path / "data"), "--port", "0", "--log-format", "xml"]
    result = run_mqpy_text(command, os.environ, timeout=30)
    assert result.returncode == 2, result.stderr
    assert "--log-format" in result.stderr and "human, json" in result.stderr, result.stderr


async def test_a_failure_while_the_receiver_is_paused_logs_when_it_will_really_go(
    json_servers: list[JsonLogServer],
    tmp_path: Path,
    start_receiver: ReceiverFactory,
    http: aiohttp.ClientSession,
) -> None:
    """Two deliveries out at once: the first answer pauses the receiver for 30 s
    (503, Retry-After), the second fails without one. Its own schedule says a few
    milliseconds, but nothing goes before the pause ends: the log says so."""
    server = start_json_server(
        json_servers, tmp_path / "data", *("--log-format", "json", "--retry-base", "0.05")
    )
    client = SeedClient(http, server.url)
    sender = await client.connect_sender()
    for text in ("one", "two"):  # no receiver yet: it takes both from the start, together
        await client.send(sender, text)

    def failures() -> list[dict[str, Any]]:
        return [e for e in server.entries() if e.get("outcome") == "retried"]

    async def pause_then_fail(request: web.Request, number: int) -> web.StreamResponse:
        if number == 1:
            return web.Response(status=503, headers={"Retry-After": "30"})
        for _ in range(500):  # answer once the pause is in force (10 s at most)
            if failures():
                break
            await asyncio.sleep(0.02)
        return web.Response(status=500)

    receiver = await start_receiver(pause_then_fail)
    receiver_id = await client.connect_receiver(receiver.url, start_at="earliest")
    await receiver.wait_for_attempts(2)
    deadline = time.monotonic() + 10
    while len(failures()) < 2:
        assert time.monotonic() < deadline, server.log
        await asyncio.sleep(0.05)
    paused = next(e for e in failures() if e["status"] == 500)
    assert paused["receiver_id"] == receiver_id
    assert "at the earliest" in paused["message"], paused
    assert "the receiver is paused until then" in paused["message"], paused
    assert "one delivery goes as a probe" in paused["message"], paused
    assert paused["retry_in"] > 20, paused  # the pause, not the message's own schedule
