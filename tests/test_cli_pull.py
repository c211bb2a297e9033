"""`mqpy subscriptions create --pull` and `mqpy subscriptions pull`, run as real
processes against a real server."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import ServerFactory
from tests.support.server import ServerProcess
from tests.test_cli_topics_subscriptions import (
    ADMIN_KEY,
    as_admin,
    create,
    fields,
    mqpy,
    publish,
    refused,
    succeeded,
)


@pytest.fixture
def secured(start_server: ServerFactory) -> ServerProcess:
    return start_server(env={"MQPY_ADMIN_KEY": ADMIN_KEY})


def test_pull_prints_and_acks_what_a_pull_subscription_got(secured: ServerProcess) -> None:
    made = create(secured, "--pull", "--topic", "reports", "--ack-deadline", "1")
    sid = str(made["id"])
    assert (made["kind"], made["url"], made["ack_deadline_seconds"]) == ("pull", None, 1)
    shown = fields(succeeded(as_admin(secured, "subscriptions", "show", sid)))
    assert (shown["kind"], shown["ack deadline seconds"]) == ("pull", "1.0")
    for n in range(3):
        publish(secured, "reports", f"report {n}", kind="daily")
    out = succeeded(as_admin(secured, "subscriptions", "pull", sid, "--wait", "5"))
    assert out.splitlines() == ["report 0", "report 1", "report 2"]
    # Acked: nothing comes again, after the deadline either.
    assert succeeded(as_admin(secured, "subscriptions", "pull", sid, "--wait", "2.5")) == ""


def test_pull_json_with_no_ack_leaves_them_to_come_again(secured: ServerProcess) -> None:
    sid = str(create(secured, "--pull", "--topic", "t", "--ack-deadline", "1")["id"])
    publish(secured, "t", "once", kind="x")
    first = succeeded(as_admin(secured, "subscriptions", "pull", sid, "--json", "--no-ack"))
    (message,) = [json.loads(line) for line in first.splitlines()]
    assert (message["body"], message["attempt"], message["attributes"]) == (
        "once",
        1,
        {"kind": "x"},
    )
    again = succeeded(as_admin(secured, "subscriptions", "pull", sid, "--json", "--wait", "5"))
    (redelivered,) = [json.loads(line) for line in again.splitlines()]
    assert (redelivered["body"], redelivered["attempt"]) == ("once", 2)


def test_pulling_a_push_subscription_or_bad_arguments_fail(secured: ServerProcess) -> None:
    push = str(create(secured, "http://127.0.0.1:9/hook", "--topic", "p")["id"])
    refused(as_admin(secured, "subscriptions", "pull", push, "--wait", "0"), "push subscription")
    for args in (
        ("subscriptions", "pull", push, "--max", "0"),
        ("subscriptions", "pull", push, "--wait", "31"),
        ("subscriptions", "create", "--pull", "http://127.0.0.1:9/hook"),
        ("subscriptions", "create", "--ack-deadline", "5", "http://127.0.0.1:9/hook"),
        ("subscriptions", "create"),
    ):
        result: subprocess.CompletedProcess[str] = mqpy(*args, "--url", secured.url)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
