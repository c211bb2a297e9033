"""`mqpy keys create|list|revoke`, run as real processes against a real server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from tests.conftest import ServerFactory
from tests.support import raw_http
from tests.support.launcher import each_at_once, run_mqpy_text
from tests.support.load import unused_port
from tests.support.server import ServerProcess

ADMIN_KEY = "cli-admin-key-5d7e21a0c4"
TABLE_HEADER = re.compile(r"^ID\s+ROLE\s+TOPICS\s+CREATED$")
_PROXY_VARIABLES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


def clean_env(**extra: str) -> dict[str, str]:
    """No MQPY_* from the developer's shell, and no proxy: requests go to 127.0.0.1."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("MQPY_") and name.lower() not in _PROXY_VARIABLES
    }
    return {**env, **extra}


def mqpy_keys(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_mqpy_text(["keys", *args], env or clean_env(), timeout=30)


def succeeded(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout


def as_admin(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return mqpy_keys(*args, "--url", server.url, "--key", ADMIN_KEY)


def status_with(server: ServerProcess, key: str) -> int:
    """What the server answers a sender connecting with `key`."""
    body = json.dumps({"ClientURL": "", "mode": "send"}).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    return raw_http.request(server.url, "POST", "/connect", body, headers).status


def listed_ids(server: ServerProcess) -> list[str]:
    answer = json.loads(succeeded(as_admin(server, "list", "--json")))
    return [key["id"] for key in answer["keys"]]


@pytest.fixture
def secured(start_server: ServerFactory) -> ServerProcess:
    return start_server(env={"MQPY_ADMIN_KEY": ADMIN_KEY})


# -- create -------------------------------------------------------------------------------


def test_create_prints_the_key_alone(secured: ServerProcess) -> None:
    result = as_admin(secured, "create", "--role", "publisher")
    key = succeeded(result).strip()
    assert result.stdout == key + "\n", result.stdout
    assert re.fullmatch(r"mqpy_[0-9a-f]{12}_\S+", key), key
    assert "once" in result.stderr, result.stderr
    assert status_with(secured, key) == 200
    assert listed_ids(secured) == [key[len("mqpy_") : len("mqpy_") + 12]]


def test_create_json_prints_the_whole_answer(secured: ServerProcess) -> None:
    created = json.loads(
        succeeded(as_admin(secured, "create", "--role", "publisher", "--json", "--topic", "x.>"))
    )
    assert created["role"] == "publisher"
    assert created["topics"] == ["x.>"]
    assert created["key"].startswith(f"mqpy_{created['id']}_")
    assert isinstance(created["created_at"], int | float)
    # Limited to x.>, the key may not use the seed's topic.
    assert status_with(secured, created["key"]) == 403


# -- list ---------------------------------------------------------------------------------


def test_list_shows_a_table_and_never_a_key(secured: ServerProcess) -> None:
    before = time.time()
    publisher = succeeded(as_admin(secured, "create", "--role", "publisher")).strip()
    succeeded(as_admin(secured, "create", "--role", "subscriber", "--topic", "orders.*"))

    table = succeeded(as_admin(secured, "list"))
    assert publisher not in table
    lines = table.splitlines()
    assert TABLE_HEADER.match(lines[0]), table
    rows = [line.split() for line in lines[1:]]
    assert [row[1:3] for row in rows] == [["publisher", "(any)"], ["subscriber", "orders.*"]]
    assert rows[0][0] == publisher[len("mqpy_") : len("mqpy_") + 12]
    today = time.strftime("%Y-%m-%d", time.gmtime(before))
    for row in rows:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", row[3]), row
        assert row[3][:10] >= today, row


def test_list_json(secured: ServerProcess) -> None:
    succeeded(as_admin(secured, "create", "--role", "admin"))
    answer = json.loads(succeeded(as_admin(secured, "list", "--json")))
    [key] = answer["keys"]
    assert key["role"] == "admin" and key["topics"] == []
    assert "key" not in key


def test_create_with_several_topics(secured: ServerProcess) -> None:
    args = ["create", "--role", "subscriber", "--topic", "orders.*", "--topic", "default"]
    succeeded(as_admin(secured, *args))
    [key] = json.loads(succeeded(as_admin(secured, "list", "--json")))["keys"]
    assert (key["role"], key["topics"]) == ("subscriber", ["orders.*", "default"])


def test_list_with_no_keys_shows_the_header(secured: ServerProcess) -> None:
    assert TABLE_HEADER.match(succeeded(as_admin(secured, "list")).strip())


# -- revoke -------------------------------------------------------------------------------


# In a group a key revoked through one process is refused by the others within a second
# (docs/operations.md, "What the nodes share").
@pytest.mark.one_process
def test_revoke(secured: ServerProcess) -> None:
    key = succeeded(as_admin(secured, "create", "--role", "publisher")).strip()
    [key_id] = listed_ids(secured)
    assert status_with(secured, key) == 200

    assert key_id in succeeded(as_admin(secured, "revoke", key_id))
    assert status_with(secured, key) == 401
    assert listed_ids(secured) == []


# -- exit codes -----------------------------------------------------------------------------


def test_revoking_an_unknown_key_exits_1_with_the_detail(secured: ServerProcess) -> None:
    result = as_admin(secured, "revoke", "ffffffffffff")
    assert result.returncode == 1, result
    assert "ffffffffffff" in result.stderr and "404" in result.stderr, result.stderr
    assert result.stdout == ""


def test_a_publisher_key_may_not_create_keys(secured: ServerProcess) -> None:
    publisher = succeeded(as_admin(secured, "create", "--role", "publisher")).strip()
    result = mqpy_keys("create", "--role", "admin", "--url", secured.url, "--key", publisher)
    assert result.returncode == 1, result
    assert "403" in result.stderr and "admin" in result.stderr, result.stderr
    assert result.stdout == ""
    assert len(listed_ids(secured)) == 1


def test_no_key_exits_1_and_says_how_to_give_one(secured: ServerProcess) -> None:
    result = mqpy_keys("list", "--url", secured.url)
    assert result.returncode == 1, result
    assert "401" in result.stderr and "MQPY_KEY" in result.stderr, result.stderr


def test_a_server_refusing_bad_input_exits_1(secured: ServerProcess) -> None:
    result = as_admin(secured, "create", "--role", "publisher", "--topic", "orders..x")
    assert result.returncode == 1, result
    assert "orders..x" in result.stderr, result.stderr


def test_nothing_listening_exits_3() -> None:
    url = f"http://127.0.0.1:{unused_port()}"
    commands = (["list"], ["create", "--role", "admin"], ["revoke", "abc"])
    # Each command retries before it gives up; run at once, those waits overlap.
    results = each_at_once(
        lambda args: mqpy_keys(*args, "--url", url, "--key", ADMIN_KEY), commands
    )
    for result in results:
        assert result.returncode == 3, result
        assert url in result.stderr, result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["create"],  # --role is required
        ["create", "--role", "superuser"],
        ["revoke"],
        ["list", "--no-such-flag"],
        ["list", "--url", "ftp://127.0.0.1:1"],
        ["list", "--url", "http://127.0.0.1:notaport"],
        ["nonsense"],
        [],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = mqpy_keys(*args)
    assert result.returncode == 2, result
    assert result.stderr, result


# -- the environment -------------------------------------------------------------------------


def test_mqpy_url_and_mqpy_key_from_the_environment(secured: ServerProcess) -> None:
    env = clean_env(MQPY_URL=secured.url, MQPY_KEY=ADMIN_KEY)
    key = succeeded(mqpy_keys("create", "--role", "publisher", env=env)).strip()
    assert status_with(secured, key) == 200
    assert key[len("mqpy_") : len("mqpy_") + 12] in succeeded(mqpy_keys("list", env=env))

    # Flags win over the environment.
    dead = clean_env(MQPY_URL=f"http://127.0.0.1:{unused_port()}", MQPY_KEY="wrong")
    assert mqpy_keys("list", env=dead).returncode == 3
    assert succeeded(mqpy_keys("list", "--url", secured.url, "--key", ADMIN_KEY, env=dead))


def test_an_open_server_needs_no_key(start_server: ServerFactory) -> None:
    server = start_server(env={"MQPY_ADMIN_KEY": ""})
    assert TABLE_HEADER.match(succeeded(mqpy_keys("list", "--url", server.url)).strip())


# -- help -----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["create"], ["list"], ["revoke"]])
def test_every_keys_command_has_help(command: list[str]) -> None:
    text = succeeded(mqpy_keys(*command, "--help", env=clean_env(COLUMNS="200")))
    assert text.startswith(f"usage: mqpy keys {' '.join(command)}".rstrip()), text
    if command:
        for named in ("--url", "--key", "MQPY_URL", "MQPY_KEY", "http://127.0.0.1:8080"):
            assert named in text, (named, text)


def test_top_level_help_names_the_keys_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mqpy", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(),
    )
    assert "keys" in succeeded(result)


def test_the_first_key_on_a_keyless_server_says_authentication_is_now_on(
    start_server: ServerFactory,
) -> None:
    keyless = start_server()
    result = mqpy_keys("create", "--role", "publisher", "--url", keyless.url)
    key = succeeded(result).strip()
    assert "authentication is now ON" in result.stderr, result.stderr
    assert "senders and receivers already connected get 401" in result.stderr, result.stderr
    assert "no admin key exists" in result.stderr and "MQPY_ADMIN_KEY" in result.stderr
    line = keyless.wait_for_log("is the first key: API keys are now on")
    assert "every caller needs one" in line, line
    assert status_with(keyless, "") == 401  # as the warning said
    assert status_with(keyless, key) == 200


def test_a_key_on_a_server_with_keys_says_nothing_of_authentication(
    secured: ServerProcess,
) -> None:
    result = as_admin(secured, "create", "--role", "admin", "--json")
    assert json.loads(succeeded(result))["authentication_turned_on"] is False
    assert "authentication" not in result.stderr, result.stderr
    assert "is the first key" not in secured.log
