"""A message's journey: GET /v1/messages/{id} and `mqpy messages show` list each
delivery's attempts (when, how long, how it ended) through a real server and a real
receiver that fails before it accepts."""

from __future__ import annotations

import re

from aiohttp import web

from tests.conftest import ReceiverFactory, ServerFactory
from tests.support.api import call, ok, subscription_body, wait_for
from tests.support.load import FAST_RETRIES
from tests.test_cli_pipes import ADMIN_KEY as PIPES_ADMIN_KEY
from tests.test_cli_pipes import into_closed_pipe
from tests.test_cli_topics_subscriptions import as_json, mqpy, refused, succeeded

ATTEMPTS_HEADER = re.compile(r"^\s+ATTEMPT\s+SENT AT\s+TOOK\s+OUTCOME\s+STATUS\s+ERROR$")


async def unavailable_twice(request: web.Request, number: int) -> web.StreamResponse:
    return web.Response(status=503 if number <= 2 else 204)


async def test_a_message_shows_each_attempt_and_the_cli_prints_them(
    start_server: ServerFactory, start_receiver: ReceiverFactory
) -> None:
    server = start_server(*FAST_RETRIES)
    receiver = await start_receiver(unavailable_twice)
    sub = ok(
        call(server.url, "POST", "/v1/subscriptions", subscription_body(receiver.url, topic="j")),
        201,
    )
    published = ok(call(server.url, "POST", "/v1/topics/j/messages", {"body": "trip"}), 201)
    message = await wait_for(
        lambda: ok(call(server.url, "GET", f"/v1/messages/{published['id']}")),
        lambda m: m["deliveries"] and m["deliveries"][0]["state"] == "delivered",
        20,
        "the delivery to succeed on its third attempt",
    )
    (delivery,) = message["deliveries"]
    history = delivery["history"]
    assert [(a["attempt"], a["outcome"], a["status"]) for a in history] == [
        (1, "retry", 503),
        (2, "retry", 503),
        (3, "delivered", 204),
    ]
    assert [a["error"] for a in history] == [
        "receiver answered HTTP 503",
        "receiver answered HTTP 503",
        None,
    ]
    assert all(a["subscription_id"] == sub["id"] for a in history)
    assert all(a["duration_ms"] >= 0 for a in history)
    sent = [a["sent_at"] for a in history]
    assert sent == sorted(sent) and all(s.endswith("Z") for s in sent)
    assert delivery["delivered_at"] >= sent[-1]

    shown = succeeded(mqpy("messages", "show", published["id"], "--url", server.url))
    lines = shown.splitlines()
    assert lines[0].split() == ["message", published["id"]]
    assert f"to subscription {sub['id']}: delivered, 3 attempt(s)" in shown
    header = next(n for n, line in enumerate(lines) if ATTEMPTS_HEADER.match(line))
    rows = [line.split() for line in lines[header + 1 : header + 4]]
    assert [(r[0], r[1], r[4], r[5]) for r in rows] == [
        ("1", sent[0], "retry", "503"),
        ("2", sent[1], "retry", "503"),
        ("3", sent[2], "delivered", "204"),
    ]
    assert " ".join(rows[0][6:]) == "receiver answered HTTP 503"
    assert rows[0][3] == "ms"
    assert as_json(mqpy("messages", "show", published["id"], "--json", "--url", server.url)) == (
        ok(call(server.url, "GET", f"/v1/messages/{published['id']}"))
    )


async def test_a_message_nobody_subscribed_to_and_an_unknown_one(
    start_server: ServerFactory,
) -> None:
    server = start_server()
    published = ok(call(server.url, "POST", "/v1/topics/lonely/messages", {"body": "x"}), 201)
    shown = succeeded(mqpy("messages", "show", published["id"], "--url", server.url))
    assert "no deliveries yet" in shown
    refused(
        mqpy("messages", "show", "msg_nope", "--url", server.url),
        "no message with id 'msg_nope' is kept",
    )


def test_messages_show_into_a_closed_pipe_stops_quietly(start_server: ServerFactory) -> None:
    server = start_server(env={"MQPY_ADMIN_KEY": PIPES_ADMIN_KEY})
    answer = call(server.url, "POST", "/v1/topics/p/messages", {"body": "x"}, key=PIPES_ADMIN_KEY)
    result = into_closed_pipe("messages", "show", ok(answer, 201)["id"], url=server.url)
    assert (result.returncode, result.stderr) == (0, "")
