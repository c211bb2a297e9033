"""Errors read as sentences about the request (issue 13): which field, what it must be,
what was sent and what to do, never the JSON parser's or urllib's own words.

Each case is a request a newcomer made and the words its `detail` must (and must not)
hold, asserted on the answer of a real server."""

from __future__ import annotations

from typing import Any

import pytest

from mqpy import verify
from tests.conftest import ServerFactory
from tests.support import raw_http
from tests.support.api import call, ok, problem
from tests.support.launcher import run_mqpy_text
from tests.support.server import ServerProcess
from tests.test_keys_cli import clean_env

ADMIN_KEY = "error-sentences-admin-key-7c1f"
# What the parser says, which no detail may repeat.
PARSER_WORDS = ("Expected `", "Object missing", "- at `", "$.", "Input data", "could not be cast")


def detail_of(response: raw_http.RawResponse, field: str | None = None) -> str:
    detail: str = problem(response, 400, field)["detail"]
    for words in PARSER_WORDS:
        assert words not in detail, detail
    return detail


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    server = ServerProcess(tmp_path_factory.mktemp("open")).start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def sender(open_server: ServerProcess) -> int:
    answer: int = ok(call(open_server.url, "POST", "/connect", {"mode": "send"}))["id"]
    return answer


def send(server: ServerProcess, body: Any) -> raw_http.RawResponse:
    return call(server.url, "POST", "/send", body)


def test_a_mistyped_id_names_the_field_the_type_and_what_was_sent(
    open_server: ServerProcess,
) -> None:
    detail = detail_of(send(open_server, {"id": "abc", "body": "x"}), "id")
    assert (
        detail
        == "`id` must be a whole number (the id that /connect answered), not the string 'abc'"
    )


def test_a_missing_field_says_it_is_missing_and_what_it_is(
    open_server: ServerProcess, sender: int
) -> None:
    detail = detail_of(send(open_server, {"id": sender}), "body")
    assert detail == "the request needs `body` (the message text), and it is missing"


def test_truncated_json_says_the_body_stops_short(open_server: ServerProcess) -> None:
    raw = b'{"id": 1, "body"'
    response = raw_http.request(open_server.url, "POST", "/send", raw, {})
    detail = detail_of(response)
    assert detail.startswith("the body stops before its JSON is complete (16 bytes arrived"), detail


def test_malformed_json_says_where(open_server: ServerProcess) -> None:
    raw = b"{'id': 1}"
    response = raw_http.request(open_server.url, "POST", "/send", raw, {})
    detail = detail_of(response)
    assert "object keys must be strings at byte 1" in detail, detail
    assert "double quotes" in detail, detail


def test_a_negative_delay_says_the_bound_and_the_value(
    open_server: ServerProcess, sender: int
) -> None:
    answer = send(open_server, {"id": sender, "body": "x", "delay_seconds": -1})
    detail = detail_of(answer, "delay_seconds")
    assert detail == "`delay_seconds` must be a number of at least 0, not the number -1"


def test_a_port_that_is_not_a_number_is_named(open_server: ServerProcess) -> None:
    url = "http://127.0.0.1:alert(1)/x"
    answer = call(open_server.url, "POST", "/connect", {"mode": "receive", "ClientURL": url})
    detail = detail_of(answer, "ClientURL")
    assert "has the port 'alert(1)', which is not a number from 0 to 65535" in detail, detail


@pytest.mark.parametrize("path", ["/send", "/v1/topics/orders/messages"])
def test_a_json_object_as_body_says_to_send_it_as_a_string(
    open_server: ServerProcess, sender: int, path: str
) -> None:
    answer = call(open_server.url, "POST", path, {"id": sender, "body": {"order": 17}})
    if path.startswith("/v1"):
        answer = call(open_server.url, "POST", path, {"body": {"order": 17}})
    detail = detail_of(answer, "body")
    assert detail.startswith("`body` must be a string (the message text), not a JSON object"), (
        detail
    )
    assert "encode it as a string first" in detail, detail


def test_nested_fields_and_mapping_values_are_named(open_server: ServerProcess) -> None:
    sub = {"url": "http://127.0.0.1:9/", "retry_policy": {"max_attempts": 0}}
    detail = detail_of(call(open_server.url, "POST", "/v1/subscriptions", sub), "retry_policy")
    assert (
        detail
        == "`retry_policy.max_attempts` must be a whole number of at least 1, not the number 0"
    )
    message = {"body": "x", "attributes": {"kind": 1}}
    path = "/v1/topics/orders/messages"
    detail = detail_of(call(open_server.url, "POST", path, message), "attributes")
    assert detail == "each value of `attributes` must be a string", detail


def test_a_topic_that_breaks_the_rule_is_told_the_rule(open_server: ServerProcess) -> None:
    sub = {"url": "http://127.0.0.1:9/", "topic": "a b"}
    detail = detail_of(call(open_server.url, "POST", "/v1/subscriptions", sub), "topic")
    assert "1 to 200 letters, digits" in detail and "not the string 'a b'" in detail, detail
    assert "regex" not in detail, detail


def test_a_key_without_bearer_says_the_scheme_is_missing(start_server: ServerFactory) -> None:
    secured = start_server(env={"MQPY_ADMIN_KEY": ADMIN_KEY})
    headers = {"Authorization": ADMIN_KEY}
    answer = raw_http.request(secured.url, "GET", "/v1/keys", None, headers)
    detail = problem(answer, 401)["detail"]
    assert detail == (
        "the Authorization header has a key but not its scheme: send it as "
        "'Authorization: Bearer <key>', with 'Bearer ' before the key"
    )
    basic = raw_http.request(secured.url, "GET", "/v1/keys", None, {"Authorization": "Basic eA=="})
    assert "'Basic' scheme" in problem(basic, 401)["detail"]


def test_https_to_a_plain_port_says_to_use_http(open_server: ServerProcess) -> None:
    url = open_server.url.replace("http://", "https://")
    result = run_mqpy_text(["status", "--url", url], clean_env(), timeout=30)
    assert result.returncode == 3, result
    assert "does not speak TLS on that port" in result.stderr, result.stderr
    assert "use http:// instead of https://" in result.stderr, result.stderr
    assert "WRONG_VERSION_NUMBER" not in result.stderr, result.stderr


def test_verify_given_text_says_to_pass_the_raw_bytes() -> None:
    headers = {"webhook-id": "msg_1", "webhook-timestamp": "1", "webhook-signature": "v1,x"}
    with pytest.raises(
        TypeError, match="verify needs the request body as bytes, exactly as received, not a str"
    ):
        verify('{"body": "x"}', headers, "whsec_AAAA")  # type: ignore[arg-type]
