"""GET /openapi.json: a valid OpenAPI 3.1 document that names every route the server
has, and whose schemas the server's real answers (successes and problems) match."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from mqpy.api.app import ROUTES
from tests.support.api import call, ok
from tests.support.raw_http import RawResponse
from tests.support.server import ServerProcess

ADMIN_KEY = "openapi-admin-key-2f7d"
NOWHERE = "http://127.0.0.1:9/hook"
UNDOCUMENTED = re.compile(r"^/static/")  # the dashboard's script, style and icon


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = ServerProcess(
        tmp_path_factory.mktemp("openapi"), env={"MQPY_ADMIN_KEY": ADMIN_KEY}
    ).start()
    yield server.url
    server.kill()


@pytest.fixture(scope="module")
def document(base: str) -> dict[str, Any]:
    response = call(base, "GET", "/openapi.json")  # public: no key
    return dict(ok(response))


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1")
    validate(document)
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_every_route_is_documented(document: dict[str, Any]) -> None:
    served = {(method.lower(), path) for method, path, _ in ROUTES if not UNDOCUMENTED.match(path)}
    documented = {
        (method, path) for path, operations in document["paths"].items() for method in operations
    }
    assert served == documented, {
        "undocumented": served - documented,
        "documented but not served": documented - served,
    }


def test_every_operation_documents_its_errors_as_problems(document: dict[str, Any]) -> None:
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, answer in operation["responses"].items():
                if int(status) >= 400:
                    content = answer["content"]
                    assert list(content) == ["application/problem+json"], (method, path)


class Checker:
    """Sends requests and checks each answer against the document."""

    def __init__(self, base: str, document: dict[str, Any]) -> None:
        self.base = base
        self.document = document
        self.exercised: set[tuple[str, str]] = set()

    def __call__(
        self,
        method: str,
        template: str,
        path: str | None = None,
        body: Any = None,
        *,
        key: str | None = ADMIN_KEY,
        expect: int | None = None,
    ) -> Any:
        response = call(self.base, method, path or template, body, key=key)
        if expect is not None:
            assert response.status == expect, (method, path, response.status, response.body)
        self.check(method.lower(), template, response)
        self.exercised.add((method.lower(), template))
        return response.json() if response.content_type.endswith("json") else None

    def check(self, method: str, template: str, response: RawResponse) -> None:
        operation = self.document["paths"][template][method]
        answers = operation["responses"]
        where = f"{method.upper()} {template} -> {response.status}"
        assert str(response.status) in answers, f"undocumented status: {where}"
        content = answers[str(response.status)].get("content")
        if content is None:
            assert not response.body, where
            return
        assert response.content_type in content, (where, response.content_type, list(content))
        schema = content[response.content_type]["schema"]
        if response.content_type.endswith("json"):
            validator = Draft202012Validator({**schema, "components": self.document["components"]})
            errors = [e.message for e in validator.iter_errors(response.json())]
            assert not errors, (where, errors, response.body[:500])


def test_real_answers_match_the_document(base: str, document: dict[str, Any]) -> None:
    check = Checker(base, document)
    # The seed protocol.
    sender = check("POST", "/connect", body={"ClientURL": "", "mode": "send"}, expect=200)["id"]
    receiver = check(
        "POST", "/connect", body={"ClientURL": NOWHERE, "mode": "receive", "topic": "r"}
    )
    check("POST", "/send", body={"id": sender, "body": "hi"}, expect=200)
    check("POST", "/send", body={"id": sender}, expect=400)
    check("POST", "/send", body={"id": 99, "body": "hi"}, expect=404)
    check("POST", "/disconnect", body={"id": sender}, expect=200)
    check("POST", "/connect", body={"mode": "send"}, key=None, expect=401)
    # Operations.
    for path in ("/dashboard", "/metrics", "/healthz", "/readyz", "/openapi.json"):
        check("GET", path, key=None, expect=200)
    check("GET", "/v1/status", expect=200)
    # Subscriptions.
    sub = check("POST", "/v1/subscriptions", body={"url": NOWHERE, "topic": "doc.*"}, expect=201)
    sid = sub["id"]
    one = "/v1/subscriptions/{subscription_id}"
    check("POST", "/v1/subscriptions", body={"url": 5}, expect=400)
    check("GET", "/v1/subscriptions", "/v1/subscriptions?limit=1", expect=200)
    check("GET", "/v1/subscriptions", "/v1/subscriptions?cursor=x", expect=400)
    check("GET", one, f"/v1/subscriptions/{sid}", expect=200)
    check("GET", one, "/v1/subscriptions/77", expect=404)
    check("PATCH", one, f"/v1/subscriptions/{sid}", {"max_per_second": 3}, expect=200)
    for action in ("pause", "resume", "rotate-secret"):
        check("POST", one + "/" + action, f"/v1/subscriptions/{sid}/{action}", expect=200)
    seek = f"/v1/subscriptions/{sid}/seek"
    check("POST", one + "/seek", seek, {"time": "2026-11-26T22:00:00Z"}, expect=200)
    check("POST", one + "/seek", seek, {"time": "yesterday"}, expect=400)
    check(
        "POST",
        one + "/seek",
        "/v1/subscriptions/77/seek",
        {"time": "2026-11-26T22:00:00Z"},
        expect=404,
    )
    dead = one + "/dead-letters"
    check("GET", dead, f"/v1/subscriptions/{sid}/dead-letters", expect=200)
    check("POST", dead + "/redrive", f"/v1/subscriptions/{sid}/dead-letters/redrive", expect=200)
    check("DELETE", dead, f"/v1/subscriptions/{sid}/dead-letters", expect=200)
    one_dead = f"/v1/subscriptions/{sid}/dead-letters/msg_none"
    check("POST", dead + "/{message_id}/redrive", one_dead + "/redrive", expect=404)
    check("DELETE", dead + "/{message_id}", one_dead, expect=404)
    # Pull subscriptions (a push one refuses to be pulled or streamed).
    pulled = check("POST", "/v1/subscriptions", body={"kind": "pull", "topic": "doc.pull"})["id"]
    check("POST", "/v1/topics/{topic}/messages", "/v1/topics/doc.pull/messages", {"body": "p"})
    got = check("POST", one + "/pull", f"/v1/subscriptions/{pulled}/pull", {}, expect=200)
    ack_ids = [got["messages"][0]["ack_id"]]
    for verb, fields in (("extend", {"seconds": 5}), ("nack", {"delay_seconds": 0}), ("ack", {})):
        path = f"/v1/subscriptions/{pulled}/{verb}"
        check("POST", f"{one}/{verb}", path, {"ack_ids": ack_ids, **fields}, expect=200)
    check("POST", one + "/pull", f"/v1/subscriptions/{sid}/pull", {}, expect=409)
    check("GET", one + "/events", f"/v1/subscriptions/{sid}/events", expect=409)
    token = one + "/events-token"
    check("POST", token, f"/v1/subscriptions/{pulled}/events-token", {"ttl_seconds": 5})
    check("POST", token, f"/v1/subscriptions/{pulled}/events-token", {"ttl_seconds": 0}, expect=400)
    check("POST", token, f"/v1/subscriptions/{sid}/events-token", expect=409)
    # Publishing, topics, messages.
    publish = "/v1/topics/{topic}/messages"
    published = check("POST", publish, "/v1/topics/doc.one/messages", {"body": "a"}, expect=201)
    check("POST", publish, "/v1/topics/doc.one/messages", {"messages": [{"body": "b"}, {}]})
    check("POST", publish, "/v1/topics/doc.one/messages", {"messages": []}, expect=400)
    check("GET", "/v1/topics", expect=200)
    check("GET", "/v1/topics/{topic}", "/v1/topics/doc.one", expect=200)
    check("GET", "/v1/topics/{topic}", "/v1/topics/doc.none", expect=404)
    message = "/v1/messages/{message_id}"
    check("GET", message, f"/v1/messages/{published['id']}", expect=200)
    check("GET", message, "/v1/messages/msg_none", expect=404)
    # Dead letters, receivers, keys.
    check("GET", "/v1/dead-letters", expect=200)
    check("POST", "/v1/dead-letters/redrive", body={}, expect=200)
    check("DELETE", "/v1/dead-letters", expect=200)
    rotate = "/v1/receivers/{receiver_id}/rotate-secret"
    check("POST", rotate, f"/v1/receivers/{receiver['id']}/rotate-secret", expect=200)
    check("DELETE", one, f"/v1/subscriptions/{sid}", expect=204)
    created = check("POST", "/v1/keys", body={"role": "subscriber"}, expect=201)
    check("GET", "/v1/keys", expect=200)
    check("GET", "/v1/keys", key=created["key"], expect=403)
    check("DELETE", "/v1/keys/{key_id}", f"/v1/keys/{created['id']}", expect=204)

    documented = {
        (method, path) for path, operations in document["paths"].items() for method in operations
    }
    assert documented == check.exercised, documented - check.exercised
