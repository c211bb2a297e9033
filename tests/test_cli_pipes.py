"""Every `mqpy` command that prints, run as a real process whose stdout is a pipe the
reader has closed (`mqpy status | head -8` once `head` has its lines): it stops quietly
with exit 0, as `mqpy listen | head -1` does, instead of a BrokenPipeError traceback.
`mqpy publish` publishes the rest of its input all the same, and a refusal still
fails it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ServerFactory
from tests.support import raw_http
from tests.support.api import call, ok
from tests.support.server import ServerProcess

ADMIN_KEY = "cli-pipes-admin-key-7e21"
_PROXY_VARIABLES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


@pytest.fixture
def secured(start_server: ServerFactory) -> ServerProcess:
    server = start_server(env={"MQPY_ADMIN_KEY": ADMIN_KEY})
    # Something to list, so every command below has lines to print.
    answer = raw_http.request(
        server.url,
        "POST",
        "/v1/topics/orders.eu/messages",
        json.dumps({"body": "x"}).encode(),
        {"Authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert answer.status == 201, answer
    return server


def into_closed_pipe(
    *args: str, url: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`mqpy ARGS` with stdout a pipe whose reader is gone before anything is written:
    the command's first write meets EPIPE every time, not only when it loses a race
    with `head`."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("MQPY_") and name.lower() not in _PROXY_VARIABLES
    }
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "mqpy", *args],
            input=stdin,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=30,
            env={**env, "MQPY_URL": url, "MQPY_KEY": ADMIN_KEY},
        )
    finally:
        os.close(write_end)


@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["status", "--json"],
        ["topics", "list"],
        ["keys", "list"],
        ["subscriptions", "list"],
        ["dead-letters", "list"],
        ["--help"],
        ["topics", "--help"],
    ],
    ids=" ".join,
)
def test_a_command_whose_reader_is_gone_stops_quietly(
    secured: ServerProcess, args: list[str]
) -> None:
    result = into_closed_pipe(*args, url=secured.url)
    assert "Traceback" not in result.stderr, result.stderr
    assert "BrokenPipeError" not in result.stderr, result.stderr
    assert result.stderr == "", result.stderr
    assert result.returncode == 0, (result.returncode, result.stderr)


def published_count(server: ServerProcess, topic: str) -> int:
    count: int = ok(call(server.url, "GET", f"/v1/topics/{topic}", key=ADMIN_KEY))["published"]
    return count


@pytest.mark.parametrize(("mode", "count"), [("--lines", 5), ("--batch", 1_500)])
def test_publish_publishes_every_line_when_its_reader_is_gone(
    secured: ServerProcess, mode: str, count: int
) -> None:
    """`mqpy publish --lines < file | head -1`: the reader's leaving stops the printing
    of ids, not the import (it used to stop at the first id printed, and exit 0; with
    --batch, after the first batch of 1,000)."""
    lines = "".join(f"line {n}\n" for n in range(count))
    result = into_closed_pipe("publish", mode, "--topic", "import", url=secured.url, stdin=lines)
    assert (result.returncode, result.stderr) == (0, "")
    assert published_count(secured, "import") == count


def test_a_refused_line_still_fails_publish_when_its_reader_is_gone(
    start_server: ServerFactory,
) -> None:
    server = start_server("--max-message-bytes", "200", env={"MQPY_ADMIN_KEY": ADMIN_KEY})
    lines = "short\n" + "x" * 500 + "\nafter it\n"
    result = into_closed_pipe(
        "publish", "--batch", "--json", "--topic", "import", url=server.url, stdin=lines
    )
    assert result.returncode == 1, result
    assert "line 2" in result.stderr and "1 line(s) refused" in result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert published_count(server, "import") == 2
