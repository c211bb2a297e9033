"""One dead letter redriven or dropped alone (not all of a receiver's): through the API
and `mqpy dead-letters redrive MESSAGE_ID --receiver ID` / `drop`, with a real server
and real receivers that refuse until told to accept."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.conftest import ReceiverFactory, ServerFactory
from tests.support.api import call, ok, problem, subscription_body, wait_for
from tests.support.load import FAST_RETRIES
from tests.support.receiver import Receiver
from tests.test_cli_topics_subscriptions import mqpy, refused, succeeded


class Gate:
    """A receiver's behaviour: HTTP 500 until opened, then 204."""

    def __init__(self) -> None:
        self.open = False

    async def __call__(self, request: web.Request, number: int) -> web.StreamResponse:
        return web.Response(status=204 if self.open else 500)


async def dead_letters_of(url: str, subscription_id: int, count: int) -> list[str]:
    answer = await wait_for(
        lambda: ok(call(url, "GET", f"/v1/subscriptions/{subscription_id}/dead-letters")),
        lambda page: len(page["dead_letters"]) == count,
        20,
        f"{count} dead letters of subscription {subscription_id}",
    )
    return sorted(letter["message_id"] for letter in answer["dead_letters"])


async def setup(
    start_server: ServerFactory, start_receiver: ReceiverFactory
) -> tuple[str, list[tuple[Gate, Receiver, int]], list[str]]:
    """Two subscriptions whose receivers refused two messages once: four dead letters."""
    server = start_server(*FAST_RETRIES, "--max-attempts", "1")
    subscribed = []
    for _ in range(2):
        gate = Gate()
        receiver = await start_receiver(gate)
        body = subscription_body(receiver.url, topic="d")
        made = ok(call(server.url, "POST", "/v1/subscriptions", body), 201)
        subscribed.append((gate, receiver, made["id"]))
    sent = [
        ok(call(server.url, "POST", "/v1/topics/d/messages", {"body": f"m{n}"}), 201)["id"]
        for n in range(2)
    ]
    for gate, _, sid in subscribed:
        assert await dead_letters_of(server.url, sid, 2) == sorted(sent)
        gate.open = True
    return server.url, subscribed, sent


def texts(receiver: Receiver) -> list[Any]:
    return [r.text for r in receiver.received]


async def test_the_api_redrives_or_drops_one_dead_letter(
    start_server: ServerFactory, start_receiver: ReceiverFactory
) -> None:
    url, [(_, first, a), (_, second, b)], [m0, m1] = await setup(start_server, start_receiver)
    assert ok(call(url, "POST", f"/v1/subscriptions/{a}/dead-letters/{m0}/redrive")) == {
        "redriven": 1
    }
    await first.wait_for(1)
    assert texts(first) == ["m0"]
    assert await dead_letters_of(url, a, 1) == [m1]
    assert ok(call(url, "DELETE", f"/v1/subscriptions/{b}/dead-letters/{m1}")) == {"purged": 1}
    assert await dead_letters_of(url, b, 1) == [m0]
    # Gone: redriven or dropped, it is no dead letter any more.
    for method, path in (
        ("POST", f"/v1/subscriptions/{a}/dead-letters/{m0}/redrive"),
        ("DELETE", f"/v1/subscriptions/{b}/dead-letters/{m1}"),
    ):
        refusal = problem(call(url, method, path), 404)
        assert refusal["type"].endswith("/unknown-dead-letter")
        assert refusal["detail"].startswith(f"subscription {path.split('/')[3]} has no dead")
    refusal = problem(call(url, "DELETE", f"/v1/subscriptions/12345/dead-letters/{m0}"), 404)
    assert refusal["detail"] == "there is no subscription with id 12345"
    # Only the one redriven was delivered; the others stay dead.
    assert second.received == []
    assert texts(first) == ["m0"]


async def test_the_cli_redrives_or_drops_one_dead_letter(
    start_server: ServerFactory, start_receiver: ReceiverFactory
) -> None:
    url, [(_, first, a), (_, second, b)], [m0, m1] = await setup(start_server, start_receiver)
    server = ["--url", url]
    said = succeeded(mqpy("dead-letters", "redrive", m1, "--receiver", str(a), *server))
    assert said.strip() == f"queued for delivery again: the dead letter of {m1} for receiver {a}"
    await first.wait_for(1)
    assert texts(first) == ["m1"]
    said = succeeded(mqpy("dead-letters", "drop", m0, "--receiver", str(b), "--json", *server))
    assert said.strip() == '{"purged": 1}'
    assert await dead_letters_of(url, b, 1) == [m1]
    assert await dead_letters_of(url, a, 1) == [m0]
    refused(
        mqpy("dead-letters", "drop", m0, "--receiver", str(b), *server),
        f"subscription {b} has no dead letter of message '{m0}'",
    )
    usage = mqpy("dead-letters", "redrive", m0, *server)
    assert usage.returncode == 2, usage
    assert "give --receiver with the message id" in usage.stderr
    assert second.received == []
