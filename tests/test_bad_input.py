"""Bad input gets a clear problem+json answer, never a 5xx, and touches nothing stored.

Most tests here are plain sync functions that drive one shared server with
`http.client` (tests/support/raw_http.py). The hypothesis test has to be sync: it
runs its body once per example, and driving aiohttp from there would mean an event
loop and a session per example (asyncio.run), where any connection still open when a
loop closes is a ResourceWarning that `filterwarnings = error` turns into a failure.
Blocking `http.client` calls need no loop, send exactly the bytes given (no
Content-Type unless asked) and never consult proxy settings, so nothing leaves
127.0.0.1.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ReceiverFactory, ServerFactory
from tests.support import raw_http
from tests.support.client import SeedClient
from tests.support.dashboard import read_dashboard
from tests.support.problems import check_problem
from tests.support.receiver import Receiver
from tests.support.server import ServerProcess

DEFAULT_MAX_BYTES = 256 * 1024
POST_ROUTES = ["/connect", "/send", "/disconnect", "/v1/dead-letters/redrive"]
# No messages are ever published to the shared server, so a receiver URL that points
# nowhere is never called; this one would be refused on loopback anyway.
NOWHERE = "http://127.0.0.1:9/hook"


@dataclass(frozen=True)
class Known:
    """Connections that exist on the server, so a bad request can aim at a real id."""

    sender: int
    receiver: int


@dataclass(frozen=True)
class Case:
    """A bad request and the answer it must get."""

    name: str
    path: str
    body: Callable[[Known], bytes]
    status: int | tuple[int, ...] = 400
    field: str | None = None
    headers: Mapping[str, str] | None = None


def js(value: Any) -> Callable[[Known], bytes]:
    return lambda known: json.dumps(value).encode()


def jsk(value: Callable[[Known], Any]) -> Callable[[Known], bytes]:
    """A JSON body built from the ids of real connections."""
    return lambda known: json.dumps(value(known)).encode()


def raw(data: bytes) -> Callable[[Known], bytes]:
    return lambda known: data


def too_large(limit: int) -> bytes:
    """A valid-looking JSON send body of exactly limit + 1 bytes."""
    head, tail = b'{"id": 1, "body": "', b'"}'
    return head + b"x" * (limit + 1 - len(head) - len(tail)) + tail


def deeply_nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


INVALID_JSON = {
    "empty": b"",
    "unclosed": b"{",
    "words": b"not json",
    "single-quotes": b"{'id': 1}",
    "trailing-comma": b'{"id": 1,}',
    "nan": b'{"id": NaN}',
    "trailing-text": b'{"id": 1} trailing',
    "lone-surrogate-escape": b'{"body": "\\ud800"}',
    "not-utf8": b'{"body": "\xff\xfe"}',
    "nested-100000-deep": deeply_nested(100_000),
}
NOT_AN_OBJECT = [b"[]", b'[{"id": 1}]', b'"string"', b"42", b"-1.5", b"null", b"true"]

CASES: list[Case] = [
    *(
        Case(f"invalid-json-{name}{path}", path, raw(body))
        for path in ("/connect", "/send", "/disconnect")
        for name, body in INVALID_JSON.items()
    ),
    *(
        Case(f"invalid-json-{name}/v1/dead-letters/redrive", "/v1/dead-letters/redrive", raw(body))
        for name, body in INVALID_JSON.items()
        if body  # an empty redrive body means "redrive everything"
    ),
    *(
        Case(f"not-an-object-{body.decode()}{path}", path, raw(body))
        for path in POST_ROUTES
        for body in NOT_AN_OBJECT
    ),
    Case(
        "gzip-garbage",
        "/send",
        raw(b"this is not gzip"),
        headers={"Content-Encoding": "gzip"},
    ),
    Case(
        "gzip-of-not-json",
        "/send",
        raw(gzip.compress(b"not json")),
        headers={"Content-Encoding": "gzip"},
    ),
    # Missing fields.
    Case("connect-no-mode", "/connect", js({"ClientURL": NOWHERE}), field="mode"),
    Case("connect-empty-object", "/connect", js({}), field="mode"),
    Case("receiver-no-url", "/connect", js({"mode": "receive"}), field="ClientURL"),
    Case(
        "receiver-empty-url",
        "/connect",
        js({"mode": "receive", "ClientURL": ""}),
        field="ClientURL",
    ),
    Case(
        "receiver-blank-url",
        "/connect",
        js({"mode": "receive", "ClientURL": " "}),
        field="ClientURL",
    ),
    Case("send-no-body", "/send", jsk(lambda k: {"id": k.sender}), field="body"),
    Case("send-no-id", "/send", js({"body": "x"}), field="id"),
    Case("disconnect-no-id", "/disconnect", js({}), field="id"),
    Case("disconnect-wrong-key", "/disconnect", jsk(lambda k: {"ids": k.receiver}), field="id"),
    # Wrong types, aimed at real ids so a lenient server would act on them.
    Case("send-id-string", "/send", jsk(lambda k: {"id": str(k.sender), "body": "x"}), field="id"),
    Case("send-id-float", "/send", jsk(lambda k: {"id": float(k.sender), "body": "x"}), field="id"),
    Case("send-id-bool", "/send", js({"id": True, "body": "x"}), field="id"),
    Case("send-id-null", "/send", js({"id": None, "body": "x"}), field="id"),
    Case("send-id-object", "/send", js({"id": {"id": 1}, "body": "x"}), field="id"),
    Case("send-body-number", "/send", jsk(lambda k: {"id": k.sender, "body": 5}), field="body"),
    Case("send-body-null", "/send", jsk(lambda k: {"id": k.sender, "body": None}), field="body"),
    Case("send-body-array", "/send", jsk(lambda k: {"id": k.sender, "body": ["x"]}), field="body"),
    Case("send-body-object", "/send", jsk(lambda k: {"id": k.sender, "body": {}}), field="body"),
    Case("connect-mode-number", "/connect", js({"ClientURL": NOWHERE, "mode": 1}), field="mode"),
    Case("connect-mode-null", "/connect", js({"ClientURL": NOWHERE, "mode": None}), field="mode"),
    Case(
        "connect-mode-list", "/connect", js({"ClientURL": NOWHERE, "mode": ["send"]}), field="mode"
    ),
    Case(
        "connect-url-number",
        "/connect",
        js({"ClientURL": 80, "mode": "receive"}),
        field="ClientURL",
    ),
    Case("disconnect-id-string", "/disconnect", jsk(lambda k: {"id": str(k.receiver)}), field="id"),
    Case(
        "disconnect-id-float", "/disconnect", jsk(lambda k: {"id": float(k.receiver)}), field="id"
    ),
    Case(
        "redrive-id-string",
        "/v1/dead-letters/redrive",
        js({"receiver_id": "1"}),
        field="receiver_id",
    ),
    Case(
        "redrive-id-float",
        "/v1/dead-letters/redrive",
        js({"receiver_id": 1.5}),
        field="receiver_id",
    ),
    # Integers no connection can have: unknown (404) or refused outright (400).
    Case("send-id-huge", "/send", js({"id": 10**30, "body": "x"}), (400, 404)),
    Case("send-id-2-63", "/send", js({"id": 2**63, "body": "x"}), (400, 404)),
    Case("send-id-negative", "/send", jsk(lambda k: {"id": -k.sender, "body": "x"}), (400, 404)),
    Case("send-id-zero", "/send", js({"id": 0, "body": "x"}), (400, 404)),
    Case("send-id-2-53", "/send", js({"id": 2**53, "body": "x"}), (400, 404)),
    Case("disconnect-id-huge", "/disconnect", js({"id": 10**30}), (400, 404)),
    Case("disconnect-id-negative", "/disconnect", jsk(lambda k: {"id": -k.receiver}), (400, 404)),
    Case("redrive-id-huge", "/v1/dead-letters/redrive", js({"receiver_id": 10**30}), (400, 404)),
    Case("redrive-id-2-63", "/v1/dead-letters/redrive", js({"receiver_id": 2**63}), (400, 404)),
    # Modes other than send/receive.
    *(
        Case(
            f"mode-{mode or 'empty'}",
            "/connect",
            js({"ClientURL": NOWHERE, "mode": mode}),
            field="mode",
        )
        for mode in ("publish", "sender", "receiver", "", " send", "both")
    ),
    # Receiver URLs that are not http(s) or not URLs at all.
    *(
        Case(f"url={url}", "/connect", js({"ClientURL": url, "mode": "receive"}), field="ClientURL")
        for url in (
            "ftp://127.0.0.1/hook",
            "file:///etc/passwd",
            "gopher://127.0.0.1:9/",
            "http://",
            "http:///hook",
            "::::",
            "http://[::1",
            "http://127.0.0.1:99999/hook",
            "not a url",  # a host name with spaces
            "http://127.0.0.1 9/hook",
        )
    ),
]

ROUTING_CASES: list[tuple[str, str, int, str | None]] = [
    ("POST", "/nope", 404, None),
    ("GET", "/nope", 404, None),
    ("POST", "/v1/nope", 404, None),
    ("GET", "/connectx", 404, None),
    ("POST", "/send//", 404, None),
    ("GET", "/send", 405, "POST"),
    ("GET", "/connect/", 405, "POST"),
    ("DELETE", "/connect", 405, "POST"),
    ("PUT", "/disconnect", 405, "POST"),
    ("GET", "/v1/dead-letters/redrive", 405, "POST"),
    ("POST", "/dashboard", 405, "GET"),
    ("PATCH", "/v1/dead-letters", 405, "DELETE"),
]


def disconnect_if_connected(base_url: str, path: str, response: raw_http.RawResponse) -> None:
    """Undo a /connect the server should have refused, so no delivery can follow."""
    if path.rstrip("/") == "/connect" and response.status == 200:
        raw_http.post_json(base_url, "/disconnect", {"id": response.json()["id"]})


def send_case(base_url: str, case: Case, known: Known) -> raw_http.RawResponse:
    response = raw_http.request(base_url, "POST", case.path, case.body(known), case.headers)
    disconnect_if_connected(base_url, case.path, response)
    return response


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("bad-input")).start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def known(shared_server: ServerProcess) -> Known:
    def connect(body: dict[str, str]) -> int:
        response = raw_http.post_json(shared_server.url, "/connect", body)
        assert response.status == 200, response
        return int(response.json()["id"])

    return Known(
        sender=connect({"ClientURL": "", "mode": "send"}),
        receiver=connect({"ClientURL": NOWHERE, "mode": "receive"}),
    )


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_bad_request_is_a_problem(shared_server: ServerProcess, known: Known, case: Case) -> None:
    response = send_case(shared_server.url, case, known)
    check_problem(response.status, response.content_type, response.body, case.status, case.field)


@pytest.mark.parametrize("path", POST_ROUTES)
def test_body_over_the_limit_is_413(shared_server: ServerProcess, path: str) -> None:
    response = raw_http.request(shared_server.url, "POST", path, too_large(DEFAULT_MAX_BYTES))
    problem = check_problem(response.status, response.content_type, response.body, 413)
    assert str(DEFAULT_MAX_BYTES) in problem["detail"]


def test_max_message_bytes_moves_the_limit(start_server: ServerFactory) -> None:
    server = start_server("--max-message-bytes", "1KiB")
    sender = raw_http.post_json(server.url, "/connect", {"mode": "send"}).json()["id"]
    head = b'{"id": %d, "body": "' % sender
    at_limit = head + b"x" * (1024 - len(head) - 2) + b'"}'
    assert len(at_limit) == 1024
    response = raw_http.request(server.url, "POST", "/send", at_limit)
    assert response.status == 200, response
    over = at_limit[:-2] + b'x"}'
    response = raw_http.request(server.url, "POST", "/send", over)
    check_problem(response.status, response.content_type, response.body, 413)
    # The default limit no longer applies: 2 KiB is too much here.
    response = raw_http.request(server.url, "POST", "/connect", too_large(2048))
    check_problem(response.status, response.content_type, response.body, 413)


def test_a_body_just_under_the_default_limit_is_accepted(server: ServerProcess) -> None:
    """The limit is on the request, so a message a little smaller than it fits."""
    sender = raw_http.post_json(server.url, "/connect", {"mode": "send"}).json()["id"]
    body = "y" * (DEFAULT_MAX_BYTES - 100)
    response = raw_http.post_json(server.url, "/send", {"id": sender, "body": body})
    assert response.status == 200, response


@pytest.mark.parametrize(("method", "path", "status", "allow"), ROUTING_CASES)
def test_unknown_route_and_wrong_method(
    shared_server: ServerProcess, method: str, path: str, status: int, allow: str | None
) -> None:
    response = raw_http.request(shared_server.url, method, path, b"{}")
    check_problem(response.status, response.content_type, response.body, status)
    if allow is not None:
        allowed = {m.strip() for m in response.headers.get("allow", "").split(",")}
        assert allow in allowed, response.headers


async def test_bad_requests_leave_stored_state_alone(
    start_server: ServerFactory, start_receiver: ReceiverFactory
) -> None:
    """A message accepted before the bad requests is delivered exactly once afterwards,
    the sender and receiver they aimed at are still connected, and nothing new exists."""
    server = start_server("--retry-base", "0.1", "--retry-max", "0.3", "--max-attempts", "1000")
    gate = asyncio.Event()

    async def hold_until_gate(request: web.Request, number: int) -> web.StreamResponse:
        return web.Response(status=204 if gate.is_set() else 500)

    receiver: Receiver = await start_receiver(hold_until_gate)
    async with aiohttp.ClientSession() as http:
        client = SeedClient(http, server.url)
        receiver_id = await client.connect_receiver(receiver.url)
        sender = await client.connect_sender()
        before = await client.send(sender, "sent before the storm")
        await receiver.wait_for_attempts(1)  # routed to the receiver and being retried

        known = Known(sender=sender, receiver=receiver_id)
        answers = await asyncio.to_thread(storm, server.url, known)

        assert server.running
        gate.set()
        (delivery,) = await receiver.wait_for(1)
        assert delivery.body == {"body": "sent before the storm"}
        assert delivery.message_id == before["message_id"]

        # The sender and receiver the bad requests aimed at are untouched.
        after = await client.send(sender, "sent after the storm")
        received = await receiver.wait_for(2)
        assert [r.message_id for r in received] == [before["message_id"], after["message_id"]]
        figures = await read_dashboard(http, server.url)
        assert (figures["readers"], figures["writers"]) == (1, 1), figures
        await asyncio.sleep(0.5)
        assert len(receiver.received) == 2, "a bad request published something"
        assert await client.dead_letters() == []

    wrong = [(name, status) for name, status in answers if not 400 <= status < 500]
    assert not wrong, f"answered outside 4xx: {wrong}"


def storm(base_url: str, known: Known) -> list[tuple[str, int]]:
    """Every bad request above, in order; the status each one got."""
    answers = [(case.name, send_case(base_url, case, known).status) for case in CASES]
    for path in POST_ROUTES:
        response = raw_http.request(base_url, "POST", path, too_large(DEFAULT_MAX_BYTES))
        answers.append((f"too-large{path}", response.status))
    for method, path, _, _ in ROUTING_CASES:
        answers.append((f"{method} {path}", raw_http.request(base_url, method, path).status))
    return answers


# -- generated input ------------------------------------------------------------------------

# Surrogates and NUL are in the mix on purpose: encoded with surrogatepass, a lone
# surrogate becomes bytes that are not UTF-8.
texts = st.text(max_size=20) | st.builds(
    str.__add__, st.text(max_size=8), st.sampled_from(["\ud800", "\udfff", "\x00", "é", "𝄞"])
)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([0, -1, 2**53 - 1, 2**53, 2**63 - 1, 2**63, -(2**63) - 1, 10**30])
    | st.floats()
    | texts
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
seed_keys = st.sampled_from(
    ["id", "ID", "Id", "body", "Body", "ClientURL", "clienturl", "MODE", "mode", "receiver_id"]
)
seed_values = (
    json_values
    | st.sampled_from(["send", "receive", "SEND", "Receive", "sender", "", NOWHERE, "::::"])
    | st.sampled_from(["127.0.0.1:9/hook", "ftp://127.0.0.1/", "http://[::1", "http://"])
)
seed_shaped = st.dictionaries(seed_keys, seed_values, max_size=4)


def encode(value: Any, ascii_only: bool) -> bytes:
    # surrogatepass: lone surrogates in generated text become invalid UTF-8 bytes.
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


encoded = st.builds(encode, seed_shaped | json_values, st.booleans())
bodies = (
    encoded
    | st.builds(lambda data, cut: data[:cut], encoded, st.integers(0, 40))
    | st.binary(max_size=64)
)
content_types = st.sampled_from(
    [None, "application/json", "text/plain", "application/x-www-form-urlencoded"]
)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(body=bodies, content_type=content_types)
def test_generated_bodies_never_get_a_5xx(
    shared_server: ServerProcess, body: bytes, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    for path in POST_ROUTES:
        response = raw_http.request(shared_server.url, "POST", path, body, headers)
        disconnect_if_connected(shared_server.url, path, response)
        assert response.status < 500, (path, body, response)
        if response.status >= 400:
            check_problem(response.status, response.content_type, response.body, response.status)


ENCODED_BODIES = {
    "gzip-garbage": ("gzip", b"this is not gzip", 400),
    "deflate-garbage": ("deflate", b"this is not deflate", 400),
    "br": ("br", b"\x0b\x02\x80hello\x03", 415),
    "compress": ("compress", b"anything", 415),
    "two-encodings": ("gzip, br", b"anything", 415),
}


@pytest.mark.parametrize("name", ENCODED_BODIES)
def test_a_bad_or_unsupported_content_encoding_is_refused_without_a_traceback(
    start_server: ServerFactory, name: str
) -> None:
    server = start_server()
    sender = raw_http.post_json(server.url, "/connect", {"mode": "send"}).json()["id"]
    encoding, body, status = ENCODED_BODIES[name]
    response = raw_http.request(
        server.url, "POST", "/send", body, headers={"Content-Encoding": encoding}
    )
    problem = check_problem(response.status, response.content_type, response.body, status)
    assert "Content-Encoding" in problem["detail"], problem
    assert "Brotli" not in problem["detail"], problem
    # A good request on a fresh connection still works, and nothing was logged as an
    # error: any client could otherwise flood the log.
    assert raw_http.post_json(server.url, "/send", {"id": sender, "body": "ok"}).status == 200
    server.terminate()
    assert "Traceback" not in server.log and "Unhandled exception" not in server.log, server.log


def test_a_compressed_body_is_read(server: ServerProcess) -> None:
    sender = raw_http.post_json(server.url, "/connect", {"mode": "send"}).json()["id"]
    message = json.dumps({"id": sender, "body": "squeezed"}).encode()
    for encoding, body in (("gzip", gzip.compress(message)), ("deflate", zlib.compress(message))):
        response = raw_http.request(
            server.url, "POST", "/send", body, headers={"Content-Encoding": encoding}
        )
        assert response.status == 200, (encoding, response)
    # The limit holds for what the body becomes, not what it weighs on the wire.
    bomb = gzip.compress(b'{"id": %d, "body": "' % sender + b"x" * (2 * DEFAULT_MAX_BYTES) + b'"}')
    assert len(bomb) < DEFAULT_MAX_BYTES
    response = raw_http.request(
        server.url, "POST", "/send", bomb, headers={"Content-Encoding": "gzip"}
    )
    check_problem(response.status, response.content_type, response.body, 413)
