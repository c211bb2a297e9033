"""`mqpy publish`, `mqpy listen` and `mqpy dead-letters`, run as real processes against a
real server: what `listen` prints is read from its stdout, as a user's pipe would."""

from __future__ import annotations

import json
import os
import pty
import queue
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import mqpy
from tests.conftest import ServerFactory
from tests.support import raw_http
from tests.support.dashboard import dashboard_figures
from tests.support.launcher import run_mqpy, start_mqpy
from tests.support.load import FAST_RETRIES, unused_port
from tests.support.server import ServerProcess

MQPY = [sys.executable, "-m", "mqpy"]
ADMIN_KEY = "cli-publish-listen-admin-key-7f3e"
MESSAGE_ID = re.compile(r"msg_[0-9a-f]{32}")
# `listen --serve` names its receiver; `listen` (pulling) its subscription.
_LISTENING = re.compile(
    r"listening on (http://\S+) as receiver (\d+)|listening to (?:pull )?subscription (\d+)"
)
_PROXY_VARIABLES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


def clean_env(**extra: str) -> dict[str, str]:
    """No MQPY_* from the developer's shell, and no proxy: requests go to 127.0.0.1."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("MQPY_") and name.lower() not in _PROXY_VARIABLES
    }
    return {**env, **extra}


def mqpy_run(
    *args: str, stdin: str | bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    data = stdin.encode() if isinstance(stdin, str) else stdin
    result = run_mqpy(list(args), env or clean_env(), data, timeout=60)
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


def succeeded(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout


def figures(server: ServerProcess) -> dict[str, int]:
    return dashboard_figures(raw_http.request(server.url, "GET", "/dashboard").body.decode())


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Listener:
    """`mqpy listen` as a child process; its stdout lines arrive on a queue."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.process = start_mqpy(["listen", *args], env or clean_env(), capture_stdout=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.errors: list[str] = []
        self.url = ""
        self.receiver_id = 0
        self._ready = threading.Event()
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.errors.append(line)
            match = _LISTENING.search(line)
            if match:
                self.url = match.group(1) or ""
                self.receiver_id = int(match.group(2) or match.group(3))
                self._ready.set()

    def wait_ready(self, timeout: float = 20.0) -> Listener:
        if not self._ready.wait(timeout):
            self.stop(signal.SIGKILL)
            raise AssertionError("mqpy listen did not start:\n" + "".join(self.errors))
        return self

    def next_lines(self, count: int, timeout: float = 20.0) -> list[str]:
        deadline = time.monotonic() + timeout
        lines: list[str] = []
        try:
            while len(lines) < count:
                lines.append(self.lines.get(timeout=max(deadline - time.monotonic(), 0.01)))
        except queue.Empty:
            raise AssertionError(
                f"got {len(lines)} of {count} lines: {lines}\n" + "".join(self.errors)
            ) from None
        return lines

    def said(self, text: str, timeout: float = 20.0) -> str:
        """The first stderr line holding `text`, once written: a line printed after the
        one that made the listener ready may not have been read yet."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((line for line in list(self.errors) if text in line), None)
            if found is not None:
                return found
            time.sleep(0.02)
        raise AssertionError(f"no stderr line with {text!r}:\n" + "".join(self.errors))

    def stop(self, sent: signal.Signals = signal.SIGINT) -> int:
        """Send `sent`, wait for the exit code; all output has been read by then."""
        if self.process.poll() is None:
            self.process.send_signal(sent)
        code = self.process.wait(timeout=30)
        for reader in self._readers:
            reader.join(10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
        return code


@pytest.fixture
def listeners() -> Iterator[Callable[..., Listener]]:
    started: list[Listener] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Listener:
        listener = Listener(*args, env=env)
        started.append(listener)
        return listener.wait_ready()

    yield start
    for listener in started:
        listener.stop(signal.SIGKILL)


@pytest.fixture
def server(start_server: ServerFactory) -> ServerProcess:
    return start_server(*FAST_RETRIES)


# -- --help ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["publish"],
        ["listen"],
        ["dead-letters"],
        ["dead-letters", "list"],
        ["dead-letters", "redrive"],
    ],
    ids=" ".join,
)
def test_every_command_has_help(command: list[str]) -> None:
    out = succeeded(mqpy_run(*command, "--help"))
    assert out.startswith(f"usage: mqpy {' '.join(command)}"), out
    if command != ["dead-letters"]:  # the group lists its subcommands instead
        assert "--url URL" in out and "--key KEY" in out, out


# -- listen receives what publish sends -------------------------------------------------------


@pytest.mark.parametrize("serve", [[], ["--serve"]], ids=["pull", "serve"])
def test_listen_prints_what_publish_sends(
    serve: list[str], server: ServerProcess, listeners: Callable[..., Listener]
) -> None:
    listener = listeners("--url", server.url, *serve)
    assert figures(server)["readers"] == len(serve)  # a receiver with --serve only
    ids = [succeeded(mqpy_run("publish", "--url", server.url, text)).strip() for text in "abc"]
    assert all(MESSAGE_ID.fullmatch(message_id) for message_id in ids), ids
    assert listener.next_lines(3) == ["a", "b", "c"]
    assert figures(server)["writers"] == 0  # each publish disconnected its sender


def test_listen_json_gives_id_attempt_and_exact_body(
    server: ServerProcess, listeners: Callable[..., Listener]
) -> None:
    listener = listeners("--url", server.url, "--json")
    body = 'two\nlines, "quotes", ünïcode'
    published = json.loads(succeeded(mqpy_run("publish", "--url", server.url, "--json", body)))
    [line] = listener.next_lines(1)
    assert json.loads(line) == {
        "message_id": published["message_id"],
        "attempt": 1,
        "topic": "default",
        "body": body,
    }


def test_listen_json_shows_topic_attributes_and_ordering_key(
    server: ServerProcess, listeners: Callable[..., Listener]
) -> None:
    listener = listeners("--url", server.url, "--topic", "orders.*", "--json")
    published = json.loads(
        succeeded(
            mqpy_run(
                "publish",
                "--url",
                server.url,
                "--topic",
                "orders.eu",
                "--attr",
                "kind=refund",
                "--ordering-key",
                "customer-7",
                "--json",
                "hello",
            )
        )
    )
    [line] = listener.next_lines(1)
    assert json.loads(line) == {
        "message_id": published["message_id"],
        "attempt": 1,
        "topic": "orders.eu",
        "body": "hello",
        "attributes": {"kind": "refund"},
        "ordering_key": "customer-7",
    }


def test_listen_prints_each_message_on_one_line_with_controls_escaped(
    server: ServerProcess, listeners: Callable[..., Listener]
) -> None:
    listener = listeners("--url", server.url)
    succeeded(mqpy_run("publish", "--url", server.url, "red \x1b[31malert\nsecond line"))
    assert listener.next_lines(1) == ["red \\x1b[31malert\\nsecond line"]


@pytest.mark.parametrize("sent", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_disconnects_the_served_listener(
    sent: signal.Signals, server: ServerProcess, listeners: Callable[..., Listener]
) -> None:
    listener = listeners("--url", server.url, "--serve")
    assert figures(server)["readers"] == 1
    assert listener.stop(sent) == 0
    assert figures(server)["readers"] == 0
    assert any("disconnected receiver" in line for line in listener.errors), listener.errors
    # The broker holds nothing for it any more: a new message is taken by nobody.
    succeeded(mqpy_run("publish", "--url", server.url, "after it left"))
    assert published_count(server, "default") == 1
    assert figures(server)["queue length"] == 0


@pytest.mark.parametrize("sent", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_deletes_the_subscription_listen_made(
    sent: signal.Signals, server: ServerProcess, listeners: Callable[..., Listener]
) -> None:
    listener = listeners("--url", server.url)
    listed = json.loads(succeeded(mqpy_run("subscriptions", "list", "--json", "--url", server.url)))
    assert [(s["id"], s["kind"]) for s in listed["subscriptions"]] == [
        (listener.receiver_id, "pull")
    ]
    assert listener.stop(sent) == 0
    said = "".join(listener.errors)
    assert f"deleted pull subscription {listener.receiver_id}" in said, said
    listed = json.loads(succeeded(mqpy_run("subscriptions", "list", "--json", "--url", server.url)))
    assert listed["subscriptions"] == []
    # The broker holds nothing for it any more: a new message is taken by nobody.
    succeeded(mqpy_run("publish", "--url", server.url, "after it left"))
    assert published_count(server, "default") == 1
    assert figures(server)["queue length"] == 0


def test_listen_refuses_a_delivery_the_broker_did_not_sign(
    server: ServerProcess, listeners: Callable[..., Listener]
) -> None:
    listener = listeners("--url", server.url, "--serve")
    forged = raw_http.request(
        listener.url,
        "POST",
        "/",
        b'{"body":"forged"}',
        {"webhook-id": "msg_x", "webhook-timestamp": str(int(time.time())), "mq-attempt": "1"},
    )
    assert forged.status == 401
    succeeded(mqpy_run("publish", "--url", server.url, "genuine"))
    assert listener.next_lines(1) == ["genuine"]


def test_listen_on_a_server_that_verifies_receivers(
    start_server: ServerFactory, listeners: Callable[..., Listener]
) -> None:
    server = start_server("--verify-receivers")
    listener = listeners("--url", server.url, "--serve")
    succeeded(mqpy_run("publish", "--url", server.url, "confirmed"))
    assert listener.next_lines(1) == ["confirmed"]


def test_publish_and_listen_with_keys(
    start_server: ServerFactory, listeners: Callable[..., Listener]
) -> None:
    server = start_server(env={"MQPY_ADMIN_KEY": ADMIN_KEY})
    admin = clean_env(MQPY_URL=server.url, MQPY_KEY=ADMIN_KEY)
    keys = {
        role: succeeded(mqpy_run("keys", "create", "--role", role, env=admin)).strip()
        for role in ("publisher", "subscriber")
    }
    listener = listeners(env=clean_env(MQPY_URL=server.url, MQPY_KEY=keys["subscriber"]))
    publisher = clean_env(MQPY_URL=server.url, MQPY_KEY=keys["publisher"])
    succeeded(mqpy_run("publish", "from the environment", env=publisher))
    assert listener.next_lines(1) == ["from the environment"]

    # A publisher key may not listen: the server's 403 detail, exit 1.
    refused = mqpy_run("listen", env=publisher)
    assert refused.returncode == 1, refused
    assert "403" in refused.stderr and "subscriber" in refused.stderr


# -- publish from stdin ---------------------------------------------------------------------


def test_publish_reads_all_of_stdin_as_one_message(
    server: ServerProcess, listeners: Callable[..., Listener]
) -> None:
    listener = listeners("--url", server.url, "--json")
    out = succeeded(mqpy_run("publish", "--url", server.url, stdin="first line\nsecond line\n"))
    [line] = listener.next_lines(1)
    # One trailing newline goes, as `echo text | mqpy publish` should equal `mqpy publish text`.
    assert json.loads(line)["body"] == "first line\nsecond line"
    assert json.loads(line)["message_id"] == out.strip()


def test_publish_lines_sends_each_line_in_order(
    server: ServerProcess, listeners: Callable[..., Listener]
) -> None:
    listener = listeners("--url", server.url, "--json")
    out = succeeded(
        mqpy_run("publish", "--url", server.url, "--lines", stdin="one\r\n\nthree\nfour")
    )
    ids = out.split()
    assert len(ids) == 4 and all(MESSAGE_ID.fullmatch(i) for i in ids), out
    received = [json.loads(line) for line in listener.next_lines(4)]
    # Published in line order: the n-th id printed is the n-th line's. (Several
    # deliveries to one receiver are in flight at once, so they may arrive in any order.)
    bodies = {r["message_id"]: r["body"] for r in received}
    assert [bodies.get(i) for i in ids] == ["one", "", "three", "four"], received


def test_publish_lines_keeps_going_through_a_rate_limit(start_server: ServerFactory) -> None:
    server = start_server("--publish-rate", "4", "--publish-burst", "1")
    out = succeeded(mqpy_run("publish", "--url", server.url, "--lines", stdin="a\nb\nc\nd\n"))
    assert len(out.split()) == 4
    assert published_count(server, "default") == 4


def test_publish_lines_stops_at_the_first_refused_line(start_server: ServerFactory) -> None:
    server = start_server("--max-message-bytes", "200")
    lines = "short\n" + "x" * 500 + "\nnever sent\n"
    result = mqpy_run("publish", "--url", server.url, "--lines", stdin=lines)
    assert result.returncode == 1, result
    assert len(result.stdout.split()) == 1
    assert "line 2" in result.stderr and "413" in result.stderr, result.stderr
    assert published_count(server, "default") == 1


def test_publish_refuses_stdin_that_is_not_utf8(server: ServerProcess) -> None:
    result = mqpy_run("publish", "--url", server.url, stdin=b"caf\xe9\n")
    assert result.returncode == 2, result
    assert "UTF-8" in result.stderr
    assert figures(server)["queue length"] == 0


def test_publish_lines_shows_progress_on_a_terminal(server: ServerProcess, tmp_path: Path) -> None:
    source = tmp_path / "events.txt"
    source.write_text("".join(f"event {n}\n" for n in range(300)))
    controller, terminal = pty.openpty()
    try:
        with source.open("rb") as stdin:
            process = subprocess.Popen(
                [*MQPY, "publish", "--url", server.url, "--lines"],
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=terminal,
                env=clean_env(),
            )
            out, _ = process.communicate(timeout=60)
        shown = read_all(controller)
    finally:
        os.close(terminal)
        os.close(controller)
    assert process.returncode == 0
    assert len(out.split()) == 300
    assert re.search(r"\[#+\.*\]\s+\d+%\s+\d+ messages", shown), shown
    assert "published 300 message(s)" in shown, shown


def read_all(fd: int) -> str:
    chunks = []
    while select.select([fd], [], [], 0.2)[0]:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


# -- dead letters ---------------------------------------------------------------------------


def test_dead_letters_list_and_redrive(start_server: ServerFactory) -> None:
    server = start_server(*FAST_RETRIES, "--max-attempts", "1")
    url = ["--url", server.url]
    with mqpy.Client(server.url) as client:
        doomed = client.connect("receive", f"http://127.0.0.1:{unused_port()}/hook")
    message_id = succeeded(mqpy_run("publish", *url, "nobody\x1bhome")).strip()

    def listed() -> list[dict[str, Any]]:
        answer = json.loads(succeeded(mqpy_run("dead-letters", "list", "--json", *url)))
        letters: list[dict[str, Any]] = answer["dead_letters"]
        return letters

    wait_for(lambda: len(listed()) == 1, "the dead letter")
    [letter] = listed()
    assert (letter["message_id"], letter["receiver_id"]) == (message_id, doomed.id)
    assert letter["body"] == "nobody\x1bhome" and letter["attempts"] == 1

    table = succeeded(mqpy_run("dead-letters", "list", *url)).splitlines()
    assert re.match(r"MESSAGE ID\s+RECEIVER\s+ATTEMPTS\s+DEAD AT\s+LAST ERROR\s+BODY$", table[0])
    assert table[1].startswith(f"{message_id}  {doomed.id}  1 ")
    assert table[1].endswith("nobody\\x1bhome")  # the escape is shown, not obeyed

    # A receiver that does not exist is said to be so, not answered "redriven: 0".
    for extra in ([], ["--json"]):
        unknown = mqpy_run("dead-letters", "redrive", "--receiver", "1", *extra, *url)
        assert unknown.returncode == 1, unknown
        assert unknown.stdout == "", unknown
        assert unknown.stderr.startswith(
            "mqpy dead-letters redrive: there is no receiver with id 1"
        ), unknown
    redriven = succeeded(mqpy_run("dead-letters", "redrive", "--receiver", str(doomed.id), *url))
    assert "redriven: 1" in redriven
    # Redriven, it is tried again, fails again and is back in the list, with the same id.
    wait_for(lambda: [d["message_id"] for d in listed()] == [message_id], "it to die again")


def test_dead_letters_need_an_admin_key(start_server: ServerFactory) -> None:
    server = start_server(env={"MQPY_ADMIN_KEY": ADMIN_KEY})
    admin = clean_env(MQPY_URL=server.url, MQPY_KEY=ADMIN_KEY)
    publisher = succeeded(mqpy_run("keys", "create", "--role", "publisher", env=admin)).strip()

    forbidden = mqpy_run("dead-letters", "list", env={**admin, "MQPY_KEY": publisher})
    assert forbidden.returncode == 1, forbidden
    assert "403" in forbidden.stderr and "admin" in forbidden.stderr
    anonymous = mqpy_run("dead-letters", "redrive", "--url", server.url)
    assert anonymous.returncode == 1, anonymous
    assert "401" in anonymous.stderr and "MQPY_KEY" in anonymous.stderr
    assert json.loads(succeeded(mqpy_run("dead-letters", "list", "--json", env=admin))) == {
        "dead_letters": []
    }


# -- exit codes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [["publish", "x"], ["listen"], ["dead-letters", "list"], ["dead-letters", "redrive"]],
    ids=" ".join,
)
def test_an_unreachable_server_exits_3(command: list[str]) -> None:
    result = mqpy_run(*command, "--url", f"http://127.0.0.1:{unused_port()}")
    assert result.returncode == 3, result
    assert "cannot reach" in result.stderr and "--url" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["publish", "--url", "ftp://127.0.0.1", "x"],
        ["publish", "--lines", "text and --lines"],
        ["listen", "--serve", "--host", "0.0.0.0"],
        ["listen", "--serve", "--path", "no-slash"],
        ["listen", "--port", "9000"],  # a receiver's option, without --serve
        ["listen", "--subscription", "7", "--topic", "orders"],
        ["listen", "--subscription", "7", "--forward-to", "http://127.0.0.1:9/hook"],
        ["listen", "--format", "cloudevents-binary"],
        ["dead-letters", "redrive", "--receiver", "abc"],
        ["dead-letters"],
    ],
    ids=" ".join,
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = mqpy_run(*args)
    assert result.returncode == 2, result
    assert result.stderr.strip()


def test_listen_on_a_busy_port_exits_2(
    server: ServerProcess, listeners: Callable[..., Listener]
) -> None:
    busy = listeners("--url", server.url, "--serve")
    port = busy.url.rsplit(":", 1)[1].split("/")[0]
    result = mqpy_run("listen", "--serve", "--url", server.url, "--port", port)
    assert result.returncode == 2, result
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert figures(server)["readers"] == 1


# -- topics, attributes, groups, filters, batches -------------------------------------------


def stored_message(server: ServerProcess, message_id: str) -> dict[str, Any]:
    answer = raw_http.request(server.url, "GET", f"/v1/messages/{message_id}")
    assert answer.status == 200, answer
    message: dict[str, Any] = answer.json()
    return message


def published_count(server: ServerProcess, topic: str) -> int:
    answer = raw_http.request(server.url, "GET", f"/v1/topics/{topic}")
    assert answer.status == 200, answer
    count: int = answer.json()["published"]
    return count


def test_publish_with_a_topic_and_options(server: ServerProcess) -> None:
    out = succeeded(
        mqpy_run(
            "publish",
            "--url",
            server.url,
            "--topic",
            "orders.eu",
            "--attr",
            "kind=created",
            "--attr",
            "note=a=b",
            "--ordering-key",
            "customer-42",
            "--delay",
            "5m",
            "--json",
            "order 17",
        )
    )
    record = json.loads(out)
    assert record["topic"] == "orders.eu" and record["duplicate"] is False
    message = stored_message(server, record["message_id"])
    assert message["body"] == "order 17"
    assert message["attributes"] == {"kind": "created", "note": "a=b"}
    assert message["ordering_key"] == "customer-42"
    assert message["deliver_at"] is not None


def test_publish_with_an_idempotency_key_stores_once(server: ServerProcess) -> None:
    args = ["publish", "--url", server.url, "--topic", "t", "--idempotency-key", "k1", "--json"]
    first = json.loads(succeeded(mqpy_run(*args, "hello")))
    again = json.loads(succeeded(mqpy_run(*args, "hello")))
    assert again == {**first, "duplicate": True}
    assert published_count(server, "t") == 1


def test_listen_to_a_pattern_with_a_filter(
    server: ServerProcess, listeners: Callable[..., Listener]
) -> None:
    listener = listeners("--url", server.url, "--topic", "orders.*", "--filter", "kind=created")
    assert "topic orders.*" in "".join(listener.errors)
    for topic, kind, text in [
        ("orders.eu", "created", "wanted 1"),
        ("orders.eu", "paid", "filtered out"),
        ("payments", "created", "other topic"),
        ("orders.us", "created", "wanted 2"),
    ]:
        publish = ["publish", "--url", server.url, "--topic", topic, "--attr", f"kind={kind}"]
        succeeded(mqpy_run(*publish, text))
    assert listener.next_lines(2) == ["wanted 1", "wanted 2"]
    time.sleep(0.5)
    assert listener.lines.empty()


def test_listeners_in_a_group_share_the_messages(
    server: ServerProcess, listeners: Callable[..., Listener]
) -> None:
    group = [listeners("--url", server.url, "--topic", "jobs", "--group", "w") for _ in range(2)]
    alone = listeners("--url", server.url, "--topic", "jobs")
    lines = "".join(f"job {n}\n" for n in range(20))
    succeeded(mqpy_run("publish", "--url", server.url, "--topic", "jobs", "--batch", stdin=lines))
    assert sorted(alone.next_lines(20)) == sorted(f"job {n}" for n in range(20))
    wait_for(lambda: sum(g.lines.qsize() for g in group) >= 20, "the group's 20 deliveries")
    shared = [line for g in group for line in g.next_lines(g.lines.qsize())]
    assert sorted(shared) == sorted(f"job {n}" for n in range(20))


def test_publish_batch_sends_every_line_in_order(
    server: ServerProcess, listeners: Callable[..., Listener]
) -> None:
    listener = listeners("--url", server.url, "--topic", "bulk", "--json")
    count = 2500  # three requests: 1,000 lines at most in each
    lines = "".join(f"line {n}\n" for n in range(count))
    out = succeeded(
        mqpy_run("publish", "--url", server.url, "--topic", "bulk", "--batch", stdin=lines)
    )
    ids = out.split()
    assert len(ids) == count and len(set(ids)) == count
    received = [json.loads(line) for line in listener.next_lines(count, timeout=60)]
    assert {r["message_id"] for r in received} == set(ids)
    for n in (0, 999, 1000, count - 1):  # printed in input order
        assert stored_message(server, ids[n])["body"] == f"line {n}"
    assert published_count(server, "bulk") == count


def test_publish_batch_reports_refused_lines_and_publishes_the_rest(
    start_server: ServerFactory,
) -> None:
    server = start_server("--max-message-bytes", "200")
    lines = "short\n" + "x" * 500 + "\nafter it\n"
    result = mqpy_run("publish", "--url", server.url, "--batch", "--json", stdin=lines)
    assert result.returncode == 1, result
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["line"] for r in records] == [1, 2, 3]
    assert records[1]["error"]["status"] == 413 and "message_id" not in records[1]
    assert "line 2" in result.stderr and "1 line(s) refused" in result.stderr
    assert published_count(server, "default") == 2


def test_publish_batch_with_an_idempotency_key_publishes_no_line_twice(
    server: ServerProcess,
) -> None:
    args = ["publish", "--url", server.url, "--batch", "--idempotency-key", "import-1", "--json"]
    first = [json.loads(line) for line in succeeded(mqpy_run(*args, stdin="a\nb")).splitlines()]
    again = [json.loads(line) for line in succeeded(mqpy_run(*args, stdin="a\nb\nc")).splitlines()]
    assert [r["duplicate"] for r in first] == [False, False]
    assert [r["duplicate"] for r in again] == [True, True, False]
    assert [r["message_id"] for r in again[:2]] == [r["message_id"] for r in first]
    assert published_count(server, "default") == 3


@pytest.mark.parametrize(
    "args",
    [
        ["publish", "--topic", "orders/eu", "x"],
        ["publish", "--topic", "orders.*", "x"],
        ["publish", "--attr", "no-equals", "x"],
        ["publish", "--attr", "a=1", "--attr", "a=2", "x"],
        ["publish", "--delay", "soon", "x"],
        ["publish", "--delay", "5", "--deliver-at", "2030-01-01T00:00:00Z", "x"],
        ["publish", "--batch", "text and --batch"],
        ["publish", "--batch", "--lines"],
        ["listen", "--topic", "orders.>.eu"],
        ["listen", "--group", "bad group"],
        ["listen", "--filter", "=value"],
        ["listen", "--filter", "a^=x", "--filter", "a=y"],
        ["listen", "--filter", "kind==x"],
        ["listen", "--filter", "kind!=x"],
        ["listen", "--filter", "n>=3"],
        ["listen", "--filter", "n>3"],
        ["listen", "--filter", "!kind=x"],
        ["listen", "--filter", "kind = x"],
        ["listen", "--filter", "kind^==x"],
    ],
    ids=" ".join,
)
def test_bad_topic_options_exit_2(args: list[str]) -> None:
    result = mqpy_run(*args, "--url", f"http://127.0.0.1:{unused_port()}")
    assert result.returncode == 2, result
    assert result.stderr.strip()


def test_a_filter_that_does_not_parse_says_what_would() -> None:
    """`kind==x` was taken as kind equal to "=x", which matched nothing the user meant."""
    result = mqpy_run("listen", "--filter", "kind==x", "--url", f"http://127.0.0.1:{unused_port()}")
    assert result.returncode == 2, result
    assert result.stdout == "", result
    assert result.stderr.startswith("mqpy listen: --filter 'kind==x' does not parse: write"), result
    assert "NAME=VALUE" in result.stderr and "there is no ==" in result.stderr, result


def test_listen_stopped_while_the_broker_is_down_says_how_to_remove_its_receiver(
    server: ServerProcess, listeners: Callable[..., Listener]
) -> None:
    listener = listeners("--url", server.url, "--serve")
    assert server.terminate() == 0
    assert listener.stop(signal.SIGINT) == 3
    said = "".join(listener.errors)
    assert f"receiver {listener.receiver_id} is still registered there" in said, said
    removal = f"mqpy subscriptions delete {listener.receiver_id}"
    assert removal in said, said
    # And the command it gives does remove it, once the broker is back.
    server.restart()
    assert figures(server)["readers"] == 1
    succeeded(mqpy_run(*removal.split()[1:], "--url", server.url))
    assert figures(server)["readers"] == 0


def test_listen_stopped_while_the_broker_is_down_says_how_to_remove_its_subscription(
    server: ServerProcess, listeners: Callable[..., Listener]
) -> None:
    listener = listeners("--url", server.url)
    assert server.terminate() == 0
    assert listener.stop(signal.SIGINT) == 3
    said = "".join(listener.errors)
    assert f"pull subscription {listener.receiver_id} is still there" in said, said
    removal = f"mqpy subscriptions delete {listener.receiver_id}"
    assert removal in said, said
    server.restart()
    succeeded(mqpy_run(*removal.split()[1:], "--url", server.url))
    listed = json.loads(succeeded(mqpy_run("subscriptions", "list", "--json", "--url", server.url)))
    assert listed["subscriptions"] == []


def test_listen_without_connecting_needs_the_secret_to_check_deliveries() -> None:
    result = mqpy_run("listen", "--serve", "--no-connect", "--port", str(unused_port()))
    assert result.returncode == 2, result
    assert "--no-connect needs the receiver's signing secret" in result.stderr, result.stderr
    assert "--secret" in result.stderr
