"""`mqpy topics list|show` and `mqpy subscriptions list|create|show|pause|resume|delete`,
run as real processes against a real server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any

import pytest

from mqpy import cli
from mqpy.commands import broker_client
from tests.conftest import ServerFactory
from tests.support import raw_http
from tests.support.launcher import each_at_once, run_mqpy_text
from tests.support.load import unused_port
from tests.support.server import ServerProcess

ADMIN_KEY = "cli-topics-subscriptions-admin-key-3b8d"
MQPY = [sys.executable, "-m", "mqpy"]
HOOK = "http://127.0.0.1:9/hook"  # nothing listens on port 9; deliveries only fail
# U+009B is the one-character CSI: printed raw, a terminal may read what follows as an
# escape sequence. The broker accepts it in a URL, so the tables must escape it.
CSI = "\u009b"
SUBSCRIPTIONS_HEADER = re.compile(r"^ID\s+KIND\s+URL\s+TOPIC\s+GROUP\s+FILTER\s+STATE\s+FORMAT$")
TOPICS_HEADER = re.compile(
    r"^TOPIC\s+PUBLISHED\s+BACKLOG\s+OLDEST PUBLISHED\s+SUBSCRIPTIONS\s+PUBLISHED/S\s+DELIVERED/S$"
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


def mqpy(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_mqpy_text(list(args), env or clean_env(), timeout=30)


def as_admin(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return mqpy(*args, "--url", server.url, "--key", ADMIN_KEY)


def succeeded(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout


def refused(result: subprocess.CompletedProcess[str], *in_detail: str) -> str:
    """Exit 1, nothing on stdout, the server's detail on stderr."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == "", result.stdout
    for text in in_detail:
        assert text in result.stderr, (text, result.stderr)
    return result.stderr


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(succeeded(result))


def publish(server: ServerProcess, topic: str, body: str = "x", **attributes: str) -> None:
    answer = raw_http.request(
        server.url,
        "POST",
        f"/v1/topics/{topic}/messages",
        json.dumps({"body": body, "attributes": attributes}).encode(),
        {"Authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert answer.status == 201, answer


def create(server: ServerProcess, *args: str) -> dict[str, Any]:
    answer: dict[str, Any] = as_json(as_admin(server, "subscriptions", "create", *args, "--json"))
    return answer


def table(text: str, header: re.Pattern[str]) -> list[list[str]]:
    lines = text.splitlines()
    assert header.match(lines[0]), text
    return [line.split() for line in lines[1:]]


def fields(text: str) -> dict[str, str]:
    """`name   value` lines (names may hold one space) as a dict."""
    pairs = [re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in text.splitlines()]
    return {pair[0]: pair[1] if len(pair) > 1 else "" for pair in pairs if pair[0]}


@pytest.fixture
def secured(start_server: ServerFactory) -> ServerProcess:
    return start_server(env={"MQPY_ADMIN_KEY": ADMIN_KEY})


# -- subscriptions ----------------------------------------------------------------------------


def test_a_subscription_from_create_to_delete(secured: ServerProcess) -> None:
    result = as_admin(
        secured,
        "subscriptions",
        "create",
        HOOK,
        "--topic",
        "orders.*",
        "--group",
        "billing",
        "--filter",
        "kind=created",
        "--filter",
        "kind=paid",
        "--filter",
        "region^=eu-",
        "--filter",
        "!test",
        "--max-attempts",
        "3",
        "--max-concurrency",
        "4",
        "--max-per-second",
        "2.5",
        "--disable-after",
        "30m",
    )
    created = fields(succeeded(result))
    assert set(created) == {"id", "secret"}, result.stdout
    assert created["id"].isdigit()
    assert created["secret"].startswith("whsec_")
    assert "shown only this once" in result.stderr, result.stderr
    subscription_id = created["id"]

    # list: a table, and the same as JSON.
    [row] = table(succeeded(as_admin(secured, "subscriptions", "list")), SUBSCRIPTIONS_HEADER)
    assert row[:5] == [subscription_id, "push", HOOK, "orders.*", "billing"]
    assert row[-2:] == ["active", "mq"]  # the default format
    [listed] = as_json(as_admin(secured, "subscriptions", "list", "--json"))["subscriptions"]
    assert listed["id"] == int(subscription_id)
    assert listed["group"] == "billing"
    assert listed["filter"] == {
        "kind": ["created", "paid"],
        "region": {"prefix": "eu-"},
        "test": {"exists": False},
    }
    assert listed["retry_policy"]["max_attempts"] == 3
    assert (listed["max_concurrency"], listed["max_per_second"]) == (4, 2.5)
    assert listed["disable_after_seconds"] == 1800
    assert "secret" not in listed

    # show
    shown = fields(succeeded(as_admin(secured, "subscriptions", "show", subscription_id)))
    assert shown["id"] == subscription_id
    assert shown["topic"] == "orders.*"
    assert shown["group"] == "billing"
    assert shown["filter"] == "kind=created,paid region^=eu- !test"
    assert shown["max attempts"] == "3"
    assert shown["max concurrency"] == "4"
    assert shown["max per second"] == "2.5"
    assert (shown["state"], shown["disable after seconds"]) == ("active", "1800.0")
    assert (shown["failing since"], shown["disabled because"]) == ("-", "-")
    assert "whsec_" not in str(shown)
    shown_json = as_json(as_admin(secured, "subscriptions", "show", subscription_id, "--json"))
    assert shown_json == listed

    # pause and resume
    paused = succeeded(as_admin(secured, "subscriptions", "pause", subscription_id))
    assert subscription_id in paused and "paused" in paused
    shown = fields(succeeded(as_admin(secured, "subscriptions", "show", subscription_id)))
    assert shown["state"] == "paused"
    [row] = table(succeeded(as_admin(secured, "subscriptions", "list")), SUBSCRIPTIONS_HEADER)
    assert row[-2] == "paused"
    resumed = as_json(as_admin(secured, "subscriptions", "resume", subscription_id, "--json"))
    assert (resumed["id"], resumed["paused"]) == (int(subscription_id), False)
    paused_again = as_json(as_admin(secured, "subscriptions", "pause", subscription_id, "--json"))
    assert paused_again["paused"] is True

    # delete
    deleted = succeeded(as_admin(secured, "subscriptions", "delete", subscription_id))
    assert subscription_id in deleted
    assert as_json(as_admin(secured, "subscriptions", "list", "--json")) == {"subscriptions": []}
    refused(
        as_admin(secured, "subscriptions", "show", subscription_id),
        "404",
        f"there is no subscription with id {subscription_id}",
    )


def test_create_json_prints_the_whole_answer_with_the_secret(secured: ServerProcess) -> None:
    result = as_admin(secured, "subscriptions", "create", HOOK, "--json")
    created = json.loads(succeeded(result))
    assert created["kind"] == "push"
    assert created["url"] == HOOK
    assert created["topic"] == "default"
    assert (created["group"], created["filter"], created["max_per_second"]) == (None, None, None)
    assert created["secret"].startswith("whsec_")
    assert "shown only this once" in result.stderr


def test_list_keeps_those_a_topic_reaches(secured: ServerProcess) -> None:
    pattern = create(secured, HOOK, "--topic", "orders.*")["id"]
    exact = create(secured, HOOK, "--topic", "orders.eu")["id"]
    create(secured, HOOK, "--topic", "payments")

    def listed(*args: str) -> list[int]:
        answer = as_json(as_admin(secured, "subscriptions", "list", "--json", *args))
        return sorted(s["id"] for s in answer["subscriptions"])

    assert len(listed()) == 3
    assert listed("--topic", "orders.eu") == sorted([pattern, exact])
    assert listed("--topic", "orders") == []
    text = succeeded(as_admin(secured, "subscriptions", "list", "--topic", "orders.us"))
    assert [row[0] for row in table(text, SUBSCRIPTIONS_HEADER)] == [str(pattern)]
    assert "no subscriptions" in succeeded(
        as_admin(secured, "subscriptions", "list", "--topic", "nothing.here")
    )


def test_a_subscriber_sees_only_its_own(secured: ServerProcess) -> None:
    mine = create(secured, HOOK)["id"]
    subscriber = succeeded(
        mqpy("keys", "create", "--role", "subscriber", "--url", secured.url, "--key", ADMIN_KEY)
    ).strip()
    env = clean_env(MQPY_URL=secured.url, MQPY_KEY=subscriber)
    theirs = json.loads(succeeded(mqpy("subscriptions", "create", HOOK, "--json", env=env)))["id"]
    answer = json.loads(succeeded(mqpy("subscriptions", "list", "--json", env=env)))
    assert [s["id"] for s in answer["subscriptions"]] == [theirs]
    refused(mqpy("subscriptions", "show", str(mine), env=env), "404")
    refused(mqpy("topics", "list", env=env), "403")


def test_server_text_is_escaped_in_tables(secured: ServerProcess) -> None:
    url = f"http://127.0.0.1:9/{CSI}31m"
    subscription_id = create(secured, url)["id"]
    for args in (["subscriptions", "list"], ["subscriptions", "show", str(subscription_id)]):
        out = succeeded(as_admin(secured, *args))
        assert CSI not in out, out
        assert "http://127.0.0.1:9/\\x9b31m" in out, out
    publish(secured, "default")
    out = succeeded(as_admin(secured, "topics", "show", "default"))
    assert CSI not in out and "\\x9b31m" in out, out
    # --json keeps the server's text as it is, for scripts.
    assert (
        as_json(as_admin(secured, "subscriptions", "show", str(subscription_id), "--json"))["url"]
        == url
    )


# -- topics -------------------------------------------------------------------------------------


def test_topics_list_and_show_after_publishing(secured: ServerProcess) -> None:
    assert "no topics yet" in succeeded(as_admin(secured, "topics", "list"))
    billing = create(
        secured,
        HOOK,
        "--topic",
        "orders.*",
        "--group",
        "billing",
        "--filter",
        "kind=created",
        "--max-attempts",
        "1",
    )["id"]
    audit = create(secured, HOOK, "--topic", "orders.>")["id"]
    for number in range(3):
        publish(secured, "orders.eu", f"order {number}", kind="created")
    publish(secured, "payments", "paid")

    rows = table(succeeded(as_admin(secured, "topics", "list")), TOPICS_HEADER)
    by_name = {row[0]: row for row in rows}
    assert sorted(by_name) == ["orders.eu", "payments"]
    assert by_name["orders.eu"][1] == "3"  # published
    assert by_name["payments"][1] == "1"
    listed = as_json(as_admin(secured, "topics", "list", "--json"))["topics"]
    figures = {topic["name"]: topic for topic in listed}
    assert figures["orders.eu"]["published"] == 3
    assert figures["orders.eu"]["subscriptions"] == 2
    assert figures["payments"]["subscriptions"] == 0
    assert by_name["orders.eu"][-3] == "2"  # subscriptions, in the table

    text = succeeded(as_admin(secured, "topics", "show", "orders.eu"))
    head, _, subscriptions = text.partition("\n\n")
    shown = fields(head)
    assert shown["topic"] == "orders.eu"
    assert shown["published"] == "3"
    assert shown["subscriptions"] == "2"
    rows = table(subscriptions, SUBSCRIPTIONS_HEADER)
    assert sorted(int(row[0]) for row in rows) == sorted([billing, audit])

    answer = as_json(as_admin(secured, "topics", "show", "orders.eu", "--json"))
    assert answer["name"] == "orders.eu" and answer["published"] == 3
    assert sorted(s["id"] for s in answer["subscriptions"]) == sorted([billing, audit])
    groups = {s["id"]: s["group"] for s in answer["subscriptions"]}
    assert groups == {billing: "billing", audit: None}

    payments = succeeded(as_admin(secured, "topics", "show", "payments"))
    assert "no subscription matches it" in payments


def test_lists_follow_every_page(
    secured: ServerProcess, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Pages of 2, so five topics and five subscriptions take three pages each."""
    for number in range(5):
        publish(secured, f"paged.t{number}")
        create(secured, HOOK, "--topic", f"paged.t{number}")
    monkeypatch.setattr(broker_client, "PAGE_SIZE", 2)
    server = ["--url", secured.url, "--key", ADMIN_KEY]

    assert cli.main(["topics", "list", "--json", *server]) == 0
    names = [topic["name"] for topic in json.loads(capsys.readouterr().out)["topics"]]
    assert sorted(names) == [f"paged.t{number}" for number in range(5)]
    assert len(set(names)) == 5

    assert cli.main(["subscriptions", "list", *server]) == 0
    rows = table(capsys.readouterr().out, SUBSCRIPTIONS_HEADER)
    assert sorted(row[3] for row in rows) == [f"paged.t{number}" for number in range(5)]
    assert len({row[0] for row in rows}) == 5


# -- exit codes ---------------------------------------------------------------------------------


def test_unknown_ids_and_topics_exit_1_with_the_servers_detail(secured: ServerProcess) -> None:
    for action in ("show", "pause", "resume", "delete"):
        refused(
            as_admin(secured, "subscriptions", action, "123"),
            "404",
            "there is no subscription with id 123",
            f"mqpy subscriptions {action}:",
        )
    refused(as_admin(secured, "topics", "show", "no.such.topic"), "404", "no.such.topic")


@pytest.mark.parametrize("rate", ["abc", "0", "-1", "nan", "inf", ""])
def test_a_bad_max_per_second_is_a_usage_error(rate: str) -> None:
    result = mqpy("subscriptions", "create", HOOK, "--max-per-second", rate)
    assert result.returncode == 2, result
    assert "--max-per-second" in result.stderr and "per second" in result.stderr, result.stderr
    assert result.stdout == ""


def test_a_max_per_second_over_the_brokers_limit_is_refused(secured: ServerProcess) -> None:
    result = as_admin(secured, "subscriptions", "create", HOOK, "--max-per-second", "1e9")
    refused(result, "400", "max_per_second")
    assert as_json(as_admin(secured, "subscriptions", "list", "--json")) == {"subscriptions": []}


def test_refusals_of_bad_settings_exit_1(secured: ServerProcess) -> None:
    refused(as_admin(secured, "subscriptions", "create", HOOK, "--max-attempts", "101"), "400")
    refused(as_admin(secured, "subscriptions", "create", HOOK, "--max-concurrency", "5000"), "400")
    refused(as_admin(secured, "subscriptions", "create", "ftp://example.com/x"), "400")
    create(secured, HOOK, "--topic", "orders.*", "--group", "g", "--filter", "kind=a")
    refused(
        as_admin(secured, "subscriptions", "create", HOOK, "--topic", "orders.*", "--group", "g"),
        "409",
        "filter",
    )


def test_no_key_exits_1_and_says_how_to_give_one(secured: ServerProcess) -> None:
    for args in (["topics", "list"], ["subscriptions", "list"]):
        refused(mqpy(*args, "--url", secured.url), "401", "MQPY_KEY")


def test_nothing_listening_exits_3() -> None:
    url = f"http://127.0.0.1:{unused_port()}"
    commands = (
        ["topics", "list"],
        ["topics", "show", "orders.eu"],
        ["subscriptions", "list"],
        ["subscriptions", "create", HOOK],
        ["subscriptions", "show", "1"],
        ["subscriptions", "pause", "1"],
        ["subscriptions", "resume", "1"],
        ["subscriptions", "delete", "1"],
    )
    # Each command retries before it gives up; run at once, those waits overlap.
    results = each_at_once(lambda args: mqpy(*args, "--url", url, "--key", ADMIN_KEY), commands)
    for result in results:
        assert result.returncode == 3, result
        assert url in result.stderr, result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["topics"],
        ["topics", "show"],
        ["topics", "show", "orders.*"],  # a pattern, not a topic
        ["topics", "list", "--no-such-flag"],
        ["subscriptions"],
        ["subscriptions", "create"],  # URL is required
        ["subscriptions", "create", HOOK, "--topic", "orders..eu"],
        ["subscriptions", "create", HOOK, "--group", "no spaces"],
        ["subscriptions", "create", HOOK, "--filter", "=x"],
        ["subscriptions", "create", HOOK, "--filter", "a^=x", "--filter", "a=y"],
        ["subscriptions", "create", HOOK, "--filter", "kind==x"],
        ["subscriptions", "create", HOOK, "--filter", "kind!=x"],
        ["subscriptions", "create", HOOK, "--filter", "n>3"],
        ["subscriptions", "create", HOOK, "--max-attempts", "0"],
        ["subscriptions", "create", HOOK, "--max-concurrency", "many"],
        ["subscriptions", "list", "--topic", "orders.*"],
        ["subscriptions", "show"],
        ["subscriptions", "show", "abc"],
        ["subscriptions", "pause", "-5"],
        ["subscriptions", "delete", "1", "2"],
        ["subscriptions", "list", "--url", "ftp://127.0.0.1:1"],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = mqpy(*args)
    assert result.returncode == 2, result
    assert result.stderr, result
    assert result.stdout == ""


# -- the environment and help ---------------------------------------------------------------


def test_mqpy_url_and_mqpy_key_from_the_environment(secured: ServerProcess) -> None:
    env = clean_env(MQPY_URL=secured.url, MQPY_KEY=ADMIN_KEY)
    created = json.loads(succeeded(mqpy("subscriptions", "create", HOOK, "--json", env=env)))
    assert str(created["id"]) in succeeded(mqpy("subscriptions", "list", env=env))
    assert "default" in succeeded(mqpy("topics", "list", env=env))


@pytest.mark.parametrize(
    "command",
    [
        ["topics"],
        ["topics", "list"],
        ["topics", "show"],
        ["subscriptions"],
        ["subscriptions", "list"],
        ["subscriptions", "create"],
        ["subscriptions", "show"],
        ["subscriptions", "pause"],
        ["subscriptions", "resume"],
        ["subscriptions", "delete"],
    ],
)
def test_every_command_has_help(command: list[str]) -> None:
    text = succeeded(mqpy(*command, "--help", env=clean_env(COLUMNS="200")))
    assert text.startswith(f"usage: mqpy {' '.join(command)}"), text
    if len(command) > 1:
        for named in ("--url", "--key", "MQPY_URL", "MQPY_KEY", "http://127.0.0.1:8080"):
            assert named in text, (named, text)


def test_top_level_help_names_both_commands() -> None:
    text = succeeded(mqpy("--help"))
    assert "topics" in text and "subscriptions" in text


def test_start_at_and_seek_from_the_command_line(secured: ServerProcess) -> None:
    publish(secured, "cli.replay", "published before the subscription")
    made = create(secured, "--pull", "--topic", "cli.replay", "--start-at", "earliest")
    sid = str(made["id"])

    def pulled() -> list[str]:
        out = succeeded(as_admin(secured, "subscriptions", "pull", sid, "--wait", "5", "--json"))
        return [json.loads(line)["body"] for line in out.splitlines()]

    assert pulled() == ["published before the subscription"]  # start_at reached it
    said = succeeded(as_admin(secured, "subscriptions", "seek", sid, "--time", "1h"))
    assert re.fullmatch(
        rf"subscription {sid} moved to \S+: 1 message\(s\) due again, 0 acknowledged\n", said
    ), said
    assert pulled() == ["published before the subscription"]  # the seek brought it back
    answer = as_json(
        as_admin(secured, "subscriptions", "seek", sid, "--time", "2099-01-01T00:00:00Z", "--json")
    )
    assert (answer["due"], answer["acked"]) == (0, 0), answer
    for args, wrong in (
        (("seek", sid, "--time", "yesterday"), "'yesterday' is neither a time"),
        (("seek", sid, "--time", "2026-11-26T23:00:00"), "with an offset"),
        (("create", "--pull", "--start-at", "soon"), "'soon' is not a start"),
    ):
        result = as_admin(secured, "subscriptions", *args)
        assert result.returncode == 2 and wrong in result.stderr, (args, result.stderr)


def test_create_format_is_listed_shown_and_refused_for_pull(secured: ServerProcess) -> None:
    made = create(secured, HOOK, "--topic", "invoices", "--format", "cloudevents-binary")
    assert made["format"] == "cloudevents-binary"
    plain = create(secured, HOOK, "--topic", "invoices")["id"]
    rows = table(succeeded(as_admin(secured, "subscriptions", "list")), SUBSCRIPTIONS_HEADER)
    assert {row[0]: row[-1] for row in rows} == {
        str(made["id"]): "cloudevents-binary",
        str(plain): "mq",
    }
    shown = fields(succeeded(as_admin(secured, "subscriptions", "show", str(made["id"]))))
    assert shown["format"] == "cloudevents-binary"
    refused = as_admin(secured, "subscriptions", "create", "--pull", "--format", "mq")
    assert refused.returncode == 2, refused
    assert "--format" in refused.stderr
