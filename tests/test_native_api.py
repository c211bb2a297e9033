"""The native /v1 API through the real server: subscriptions (create, read, list page by
page, change, pause, resume, delete), seed receivers among them, topics, messages and
where their deliveries stand, one subscription's dead letters, who may see what, and
bad input answered with problem+json."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import ReceiverFactory, ServerFactory
from tests.support.api import call, ok, problem, subscription_body, wait_for
from tests.support.load import FAST_RETRIES
from tests.support.server import ServerProcess

ADMIN_KEY = "native-api-admin-key-5c0e1a"
# Never called: nothing is published to the topics these subscriptions take.
NOWHERE = "http://127.0.0.1:9/hook"
REDRIVE = "/v1/dead-letters/redrive"


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One open server (no keys) for the tests that only read or make their own things."""
    server = ServerProcess(tmp_path_factory.mktemp("native"), env={"MQPY_ADMIN_KEY": ""}).start()
    yield server.url
    server.kill()


# -- subscriptions -----------------------------------------------------------------------------


def test_a_subscription_is_created_read_changed_paused_resumed_and_deleted(shared: str) -> None:
    created = call(
        shared,
        "POST",
        "/v1/subscriptions",
        subscription_body(
            NOWHERE,
            topic="crud.*",
            filter={"region": ["eu", "us"]},
            retry_policy={"max_attempts": 3, "min_backoff_seconds": 0.5},
            max_concurrency=2,
        ),
    )
    subscription = ok(created, 201)
    sid = subscription["id"]
    assert created.headers["location"] == f"/v1/subscriptions/{sid}"
    assert subscription["secret"].startswith("whsec_")
    assert subscription["kind"] == "push" and subscription["connection_id"] is None
    assert subscription["topic"] == "crud.*" and subscription["group"] is None
    assert subscription["filter"] == {"region": ["eu", "us"]}
    assert subscription["retry_policy"] == {
        "max_attempts": 3,
        "min_backoff_seconds": 0.5,
        "max_backoff_seconds": None,
        "max_age_seconds": None,
    }
    assert subscription["created_at"].endswith("Z") and "." in subscription["created_at"]

    read = ok(call(shared, "GET", f"/v1/subscriptions/{sid}"))
    assert "secret" not in read, "the secret is shown once, at creation"
    assert read == {k: v for k, v in subscription.items() if k != "secret"}

    changed = ok(
        call(
            shared,
            "PATCH",
            f"/v1/subscriptions/{sid}",
            {"filter": None, "max_per_second": 25, "max_concurrency": None},
        )
    )
    assert (changed["filter"], changed["max_per_second"], changed["max_concurrency"]) == (
        None,
        25,
        None,
    )
    assert changed["retry_policy"]["max_attempts"] == 3, "what PATCH left out stays"
    assert ok(call(shared, "GET", f"/v1/subscriptions/{sid}")) == changed

    assert ok(call(shared, "POST", f"/v1/subscriptions/{sid}/pause"))["paused"] is True
    assert ok(call(shared, "GET", f"/v1/subscriptions/{sid}"))["paused"] is True
    assert ok(call(shared, "POST", f"/v1/subscriptions/{sid}/resume"))["paused"] is False

    rotated = ok(call(shared, "POST", f"/v1/subscriptions/{sid}/rotate-secret"))
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != subscription["secret"]

    assert ok(call(shared, "DELETE", f"/v1/subscriptions/{sid}"), 204) is None
    problem(call(shared, "GET", f"/v1/subscriptions/{sid}"), 404)
    problem(call(shared, "DELETE", f"/v1/subscriptions/{sid}"), 404)


def test_subscriptions_are_listed_page_by_page(shared: str) -> None:
    made = {
        ok(
            call(shared, "POST", "/v1/subscriptions", subscription_body(NOWHERE, topic="paged")),
            201,
        )["id"]
        for _ in range(7)
    }
    seen: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        query = "?topic=paged&limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = ok(call(shared, "GET", "/v1/subscriptions" + query))
        assert len(page["subscriptions"]) <= 3
        seen += [s["id"] for s in page["subscriptions"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert pages < 10, "the cursor never ran out"
    assert pages >= 3
    assert sorted(seen) == sorted(made), "every subscription once, none twice"
    # The topic filter matched only these: the other tests' subscriptions are elsewhere.
    for sid in made:
        call(shared, "DELETE", f"/v1/subscriptions/{sid}")


def test_a_seed_receiver_is_a_subscription_and_deleting_it_disconnects(shared: str) -> None:
    connected = ok(
        call(
            shared,
            "POST",
            "/connect",
            {"ClientURL": NOWHERE, "mode": "receive", "topic": "seed.>", "group": "workers"},
        )
    )
    rid = connected["id"]
    listed = ok(call(shared, "GET", "/v1/subscriptions?topic=seed.one"))["subscriptions"]
    (mine,) = [s for s in listed if s["id"] == rid]
    assert mine["kind"] == "seed" and mine["connection_id"] == rid
    assert (mine["topic"], mine["group"], mine["url"]) == ("seed.>", "workers", NOWHERE)

    ok(call(shared, "DELETE", f"/v1/subscriptions/{rid}"), 204)
    gone = call(shared, "POST", "/disconnect", {"id": rid})
    problem(gone, 404)


# -- publishing, topics and messages -----------------------------------------------------------


def test_publish_one_then_the_same_idempotency_key_again(shared: str) -> None:
    path = "/v1/topics/idem.topic/messages"
    headers = {"Idempotency-Key": "order-17"}
    first = call(shared, "POST", path, {"body": "hello"}, headers=headers)
    published = ok(first, 201)
    assert published == {"id": published["id"], "topic": "idem.topic", "duplicate": False}
    assert first.headers["location"] == f"/v1/messages/{published['id']}"
    again = ok(call(shared, "POST", path, {"body": "hello"}, headers=headers), 200)
    assert again == {"id": published["id"], "topic": "idem.topic", "duplicate": True}
    # The field means the same as the header.
    field = ok(call(shared, "POST", path, {"body": "x", "idempotency_key": "order-17"}))
    assert field["id"] == published["id"] and field["duplicate"] is True


def test_a_batch_publishes_the_good_and_reports_the_bad(shared: str) -> None:
    batch = {
        "messages": [
            {"body": "one", "attributes": {"kind": "a"}},
            {"body": 2},
            {"body": "three", "delay_seconds": 60},
            {"body": "four", "delay_seconds": 1, "deliver_at": "2030-01-01T00:00:00Z"},
            "not an object",
        ]
    }
    answer = ok(call(shared, "POST", "/v1/topics/batch.topic/messages", batch))
    assert (answer["accepted"], answer["rejected"]) == (2, 3)
    results = answer["results"]
    assert [("id" in r, "error" in r) for r in results] == [
        (True, False),
        (False, True),
        (True, False),
        (False, True),
        (False, True),
    ]
    assert results[1]["error"]["status"] == 400 and results[1]["error"]["field"] == "body"
    assert results[3]["error"]["field"] == "deliver_at"
    message = ok(call(shared, "GET", f"/v1/messages/{results[2]['id']}"))
    assert message["body"] == "three" and message["deliver_at"].endswith("Z")


# In a group a topic's publish_rate is up to 1 s late (docs/operations.md, groups).
@pytest.mark.one_process
def test_topics_are_listed_and_read(shared: str) -> None:
    sub = ok(
        call(shared, "POST", "/v1/subscriptions", subscription_body(NOWHERE, topic="shown.*")), 201
    )
    ok(call(shared, "POST", "/v1/subscriptions/{}/pause".format(sub["id"])))
    for body in ("a", "b"):
        ok(call(shared, "POST", "/v1/topics/shown.one/messages", {"body": body}), 201)
    topic = ok(call(shared, "GET", "/v1/topics/shown.one"))
    assert (topic["name"], topic["published"], topic["backlog"]) == ("shown.one", 2, 2)
    assert [s["id"] for s in topic["subscriptions"]] == [sub["id"]]
    assert topic["oldest_published_at"].endswith("Z")
    assert topic["publish_rate"] > 0
    names: list[str] = []
    cursor = ""
    while True:
        page = ok(call(shared, "GET", "/v1/topics?limit=1" + cursor))
        names += [t["name"] for t in page["topics"]]
        if page["next_cursor"] is None:
            break
        cursor = "&cursor=" + page["next_cursor"]
    assert "shown.one" in names and len(names) == len(set(names))
    problem(call(shared, "GET", "/v1/topics/never.seen"), 404)
    ok(call(shared, "DELETE", "/v1/subscriptions/{}".format(sub["id"])), 204)


async def test_a_message_shows_where_its_delivery_stands(
    server: ServerProcess, start_receiver: ReceiverFactory
) -> None:
    receiver = await start_receiver()
    sub = ok(
        call(server.url, "POST", "/v1/subscriptions", subscription_body(receiver.url, topic="t")),
        201,
    )
    published = ok(
        call(
            server.url,
            "POST",
            "/v1/topics/t/messages",
            {"body": "tracked", "attributes": {"k": "v"}, "ordering_key": "o1"},
        ),
        201,
    )
    await receiver.wait_for(1)
    path = f"/v1/messages/{published['id']}"
    message = await wait_for(
        lambda: ok(call(server.url, "GET", path)),
        lambda m: m["deliveries"] and m["deliveries"][0]["state"] == "delivered",
        10,
        "the delivery to show as delivered",
    )
    assert (message["body"], message["attributes"], message["ordering_key"]) == (
        "tracked",
        {"k": "v"},
        "o1",
    )
    (delivery,) = message["deliveries"]
    assert delivery["subscription_id"] == sub["id"]
    assert delivery["attempts"] >= 1 and delivery["delivered_at"].endswith("Z")
    assert receiver.received[0].body["attributes"] == {"k": "v"}


async def test_one_subscriptions_dead_letters_are_listed_redriven_and_purged(
    start_server: ServerFactory, start_receiver: ReceiverFactory
) -> None:
    server = start_server(*FAST_RETRIES, "--max-attempts", "2")

    async def refuse(request: web.Request, number: int) -> web.StreamResponse:
        return web.Response(status=500)

    receiver = await start_receiver(refuse)
    base = server.url
    sub = ok(
        call(base, "POST", "/v1/subscriptions", subscription_body(receiver.url, topic="d")), 201
    )
    other = ok(call(base, "POST", "/v1/subscriptions", subscription_body(NOWHERE, topic="x")), 201)
    published = ok(call(base, "POST", "/v1/topics/d/messages", {"body": "doomed"}), 201)
    path = f"/v1/subscriptions/{sub['id']}/dead-letters"

    def dead() -> list[dict[str, Any]]:
        return list(ok(call(base, "GET", path))["dead_letters"])

    (letter,) = await wait_for(dead, lambda d: len(d) == 1, 20, "a dead letter")
    assert (letter["message_id"], letter["receiver_id"], letter["topic"]) == (
        published["id"],
        sub["id"],
        "d",
    )
    assert letter["last_status"] == 500 and letter["attempts"] == 2
    assert ok(call(base, "GET", f"/v1/subscriptions/{other['id']}/dead-letters")) == {
        "dead_letters": [],
        "next_cursor": None,
    }
    assert ok(call(base, "POST", path + "/redrive")) == {"redriven": 1}
    await wait_for(dead, lambda d: len(d) == 1, 20, "the redriven letter to die again")
    assert ok(call(base, "DELETE", path)) == {"purged": 1}
    assert dead() == []
    assert ok(call(base, "GET", "/v1/dead-letters"))["dead_letters"] == []


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_redriving_a_receiver_that_does_not_exist_is_404(
    start_server: ServerFactory, store: str, request: pytest.FixtureRequest
) -> None:
    """`{"receiver_id": N}` for no receiver was `{"redriven": 0}`, so a mistyped id
    looked like a redrive that had nothing to do; even to an admin it is a 404 now."""
    args = [] if store == "sqlite" else ["--store", request.getfixturevalue("postgres_url")]
    base = start_server(*args).url
    sub = ok(call(base, "POST", "/v1/subscriptions", subscription_body(NOWHERE, topic="x")), 201)
    assert ok(call(base, "POST", REDRIVE, {"receiver_id": sub["id"]})) == {"redriven": 0}
    never = problem(call(base, "POST", REDRIVE, {"receiver_id": sub["id"] + 1}), 404)
    assert never["type"].endswith("unknown-subscription"), never
    assert never["detail"] == f"there is no subscription with id {sub['id'] + 1}", never
    ok(call(base, "DELETE", f"/v1/subscriptions/{sub['id']}"), 204)
    gone = problem(call(base, "POST", REDRIVE, {"receiver_id": sub["id"]}), 404)
    assert gone["type"].endswith("unknown-subscription"), gone


# -- rights ------------------------------------------------------------------------------------


def _key(base: str, role: str, topics: list[str] | None = None) -> str:
    body: dict[str, Any] = {"role": role}
    if topics is not None:
        body["topics"] = topics
    return str(ok(call(base, "POST", "/v1/keys", body, key=ADMIN_KEY), 201)["key"])


def test_a_subscriber_sees_and_manages_only_its_own(start_server: ServerFactory) -> None:
    base = start_server(env={"MQPY_ADMIN_KEY": ADMIN_KEY}).url
    alice, bob = _key(base, "subscriber"), _key(base, "subscriber")
    publisher = _key(base, "publisher", ["orders.>"])
    mine = ok(
        call(base, "POST", "/v1/subscriptions", subscription_body(NOWHERE, topic="a"), key=alice),
        201,
    )
    sid = mine["id"]
    listed = ok(call(base, "GET", "/v1/subscriptions", key=alice))["subscriptions"]
    assert [s["id"] for s in listed] == [sid]
    assert ok(call(base, "GET", "/v1/subscriptions", key=bob))["subscriptions"] == []
    for method, path in [
        ("GET", f"/v1/subscriptions/{sid}"),
        ("PATCH", f"/v1/subscriptions/{sid}"),
        ("POST", f"/v1/subscriptions/{sid}/pause"),
        ("DELETE", f"/v1/subscriptions/{sid}"),
        ("GET", f"/v1/subscriptions/{sid}/dead-letters"),
    ]:
        body: dict[str, Any] | None = {} if method == "PATCH" else None
        problem(call(base, method, path, body, key=bob), 404)
    ok(call(base, "GET", f"/v1/subscriptions/{sid}/dead-letters", key=alice))
    admin_view = ok(call(base, "GET", "/v1/subscriptions", key=ADMIN_KEY))["subscriptions"]
    assert [s["id"] for s in admin_view] == [sid]
    # Topics and every dead letter are for admins; subscriptions for subscribers.
    problem(call(base, "GET", "/v1/topics", key=alice), 403)
    problem(call(base, "GET", "/v1/dead-letters", key=alice), 403)
    problem(call(base, "POST", "/v1/subscriptions", subscription_body(NOWHERE), key=publisher), 403)
    problem(call(base, "POST", "/v1/topics/a/messages", {"body": "x"}, key=alice), 403)
    problem(call(base, "POST", "/v1/topics/books/messages", {"body": "x"}, key=publisher), 403)
    ok(call(base, "POST", "/v1/topics/orders.eu/messages", {"body": "x"}, key=publisher), 201)
    problem(call(base, "GET", "/v1/subscriptions"), 401)


# -- bad input ---------------------------------------------------------------------------------

Request = tuple[str, str, Any]


def subscribe(**fields: Any) -> Request:
    return ("POST", "/v1/subscriptions", {"url": NOWHERE, **fields})


def publish(**fields: Any) -> Request:
    return ("POST", "/v1/topics/t/messages", fields)


def get(path: str) -> Request:
    return ("GET", path, None)


LATER = "2030-01-01T00:00:00Z"
BAD_INPUT: list[tuple[str, Request, int, str | None]] = [
    ("bad cursor", get("/v1/subscriptions?cursor=nonsense"), 400, None),
    ("empty cursor", get("/v1/dead-letters?cursor="), 400, None),
    ("limit 0", get("/v1/subscriptions?limit=0"), 400, "limit"),
    ("limit 1001", get("/v1/topics?limit=1001"), 400, "limit"),
    ("limit text", get("/v1/dead-letters?limit=ten"), 400, "limit"),
    ("unknown subscription", get("/v1/subscriptions/123456"), 404, None),
    ("subscription id not a number", ("POST", "/v1/subscriptions/abc/pause", None), 404, None),
    ("unknown message", get("/v1/messages/msg_nope"), 404, None),
    ("unknown topic", get("/v1/topics/no.such.topic"), 404, None),
    ("bad topic in path", ("POST", "/v1/topics/a%20b/messages", {"body": "x"}), 400, "topic"),
    ("pattern to publish to", ("POST", "/v1/topics/a.*/messages", {"body": "x"}), 400, "topic"),
    ("bad filter", subscribe(filter={"a": 1}), 400, "filter"),
    ("filter not an object", subscribe(filter=3), 400, "filter"),
    ("bad pattern", subscribe(topic="a.>.b"), 400, "topic"),
    ("bad group", subscribe(group="a b"), 400, "group"),
    ("no url", ("POST", "/v1/subscriptions", {"topic": "a"}), 400, "url"),
    ("ftp url", subscribe(url="ftp://x/y"), 400, "url"),
    ("wrong type", subscribe(max_concurrency="2"), 400, "max_concurrency"),
    ("out of range", subscribe(max_per_second=0), 400, "max_per_second"),
    ("retry attempts", subscribe(retry_policy={"max_attempts": 0}), 400, "retry_policy"),
    ("unknown field", subscribe(topik="a"), 400, "topik"),
    ("patch topic", ("PATCH", "/v1/subscriptions/1", {"topic": "b"}), 400, "topic"),
    ("both delays", publish(body="x", delay_seconds=1, deliver_at=LATER), 400, "deliver_at"),
    ("no offset", publish(body="x", deliver_at="2030-01-01T00:00:00"), 400, "deliver_at"),
    ("deliver_at not a time", publish(body="x", deliver_at="soon"), 400, "deliver_at"),
    ("delay too long", publish(body="x", delay_seconds=31536001), 400, "delay_seconds"),
    ("body not a string", publish(body=5), 400, "body"),
    ("no body", publish(attributes={}), 400, "body"),
    (
        "too many attributes",
        publish(body="x", attributes={str(i): "v" for i in range(101)}),
        400,
        "attributes",
    ),
    ("attribute too long", publish(body="x", attributes={"a": "v" * 1025}), 400, "attributes"),
    ("empty batch", publish(messages=[]), 400, "messages"),
    ("batch too big", publish(messages=[{"body": "x"}] * 1001), 400, "messages"),
    ("batch not a list", publish(messages={"body": "x"}), 400, "messages"),
    ("seed send group", ("POST", "/connect", {"mode": "send", "group": "g"}), 400, "group"),
    ("seed bad topic", ("POST", "/connect", {"mode": "send", "topic": "a.*"}), 400, "topic"),
    (
        "seed bad filter",
        ("POST", "/connect", {"mode": "receive", "ClientURL": NOWHERE, "filter": []}),
        400,
        "filter",
    ),
]


@pytest.mark.parametrize(
    ("request_", "status", "field"),
    [case[1:] for case in BAD_INPUT],
    ids=[case[0] for case in BAD_INPUT],
)
def test_bad_input_is_a_problem(
    shared: str, request_: Request, status: int, field: str | None
) -> None:
    method, path, body = request_
    problem(call(shared, method, path, body), status, field)


def test_bad_cursor_says_so(shared: str) -> None:
    found = problem(call(shared, "GET", "/v1/subscriptions?cursor=nonsense"), 400)
    assert found["type"].endswith("/bad-cursor"), found


def test_idempotency_header_and_field_must_agree(shared: str) -> None:
    response = call(
        shared,
        "POST",
        "/v1/topics/t/messages",
        {"body": "x", "idempotency_key": "a"},
        headers={"Idempotency-Key": "b"},
    )
    problem(response, 400, "idempotency_key")


# -- seed additions and limits -----------------------------------------------------------------


def test_seed_send_keeps_its_answer_and_gains_options(shared: str) -> None:
    sender = ok(call(shared, "POST", "/connect", {"ClientURL": "", "Mode": "SEND"}))["id"]
    plain = ok(call(shared, "POST", "/send", {"ID": sender, "Body": "hi"}))
    assert set(plain) == {"status", "id", "message_id"}, "the seed's answer, nothing added"
    assert (plain["status"], plain["id"]) == ("Message enqueued.", sender)
    options = {"id": sender, "body": "hi", "topic": "seed.opts", "attributes": {"a": "1"}}
    first = ok(call(shared, "POST", "/send", {**options, "idempotency_key": "s1"}))
    assert "duplicate" not in first
    again = ok(call(shared, "POST", "/send", options, headers={"Idempotency-Key": "s1"}))
    assert again["message_id"] == first["message_id"] and again["duplicate"] is True
    message = ok(call(shared, "GET", f"/v1/messages/{first['message_id']}"))
    assert (message["topic"], message["attributes"]) == ("seed.opts", {"a": "1"})


def test_batches_have_their_own_body_limit(start_server: ServerFactory) -> None:
    base = start_server("--max-message-bytes", "1KiB", "--max-batch-bytes", "8KiB").url
    path = "/v1/topics/t/messages"
    big = "x" * 600
    answer = ok(call(base, "POST", path, {"messages": [{"body": big}] * 3}))
    assert answer["accepted"] == 3, "a batch may be larger than one message"
    answer = ok(call(base, "POST", path, {"messages": [{"body": "ok"}, {"body": "y" * 2000}]}))
    assert answer["accepted"] == 1 and answer["results"][1]["error"]["status"] == 413
    over_batch = problem(call(base, "POST", path, {"messages": [{"body": big}] * 14}), 413)
    assert "8192" in over_batch["detail"] and "--max-batch-bytes" in over_batch["detail"]
    other = call(base, "POST", "/v1/subscriptions", {"url": NOWHERE, "topic": "t" * 1100})
    assert "1024" in problem(other, 413)["detail"]


async def test_a_chunked_body_is_held_to_the_limit_as_it_arrives(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    """Without a Content-Length the body is counted as it comes: still a 413."""
    base = start_server("--max-message-bytes", "1KiB").url

    async def pieces() -> AsyncIterator[bytes]:
        yield b'{"url": "http://127.0.0.1:9/hook", "topic": "'
        for _ in range(20):
            yield b"t" * 100
        yield b'"}'

    async with http.post(base + "/v1/subscriptions", data=pieces()) as response:
        problem_body = await response.read()
        assert response.status == 413, problem_body
        assert response.content_type == "application/problem+json"
        assert b"1024" in problem_body
