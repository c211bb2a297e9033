"""A subscription created with the caller's signing secret, or created paused, so a
receiver that checks signatures never refuses the first deliveries: through the API
and `mqpy subscriptions create`, with a real server and a real verifying receiver."""

from __future__ import annotations

import base64

import pytest
from aiohttp import web

from mqpy.wire.signing import InvalidSignature, generate_secret, verify
from tests.conftest import ReceiverFactory, ServerFactory
from tests.support.api import call, ok, problem, subscription_body
from tests.support.receiver import Behaviour
from tests.test_cli_topics_subscriptions import ADMIN_KEY, as_admin, refused, succeeded
from tests.test_cli_topics_subscriptions import as_json as cli_json


def verifying(secret: str) -> Behaviour:
    """A receiver that refuses (401) whatever its secret does not verify."""

    async def answer(request: web.Request, number: int) -> web.StreamResponse:
        try:
            verify(await request.read(), dict(request.headers), secret)
        except InvalidSignature:
            return web.Response(status=401)
        return web.Response(status=204)

    return answer


async def test_the_callers_secret_signs_the_very_first_delivery(
    start_server: ServerFactory, start_receiver: ReceiverFactory
) -> None:
    server = start_server()
    secret = generate_secret()
    receiver = await start_receiver(verifying(secret))
    made = ok(
        call(
            server.url,
            "POST",
            "/v1/subscriptions",
            subscription_body(receiver.url, topic="signed", secret=secret),
        ),
        201,
    )
    assert made["secret"] == secret
    ok(call(server.url, "POST", "/v1/topics/signed/messages", {"body": "first"}), 201)
    (received,) = await receiver.wait_for(1)
    assert received.text == "first"
    # Nothing was refused first: the receiver verified attempt 1.
    assert [a.headers["mq-attempt"] for a in receiver.attempts] == ["1"]


@pytest.mark.parametrize(
    ("secret", "why"),
    [
        ("s3cret", "it must start with 'whsec_'"),
        ("whsec_not base64!", "must be base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "24 to 64 random bytes, not 5"),
        ("whsec_" + base64.b64encode(bytes(65)).decode(), "24 to 64 random bytes, not 65"),
    ],
)
def test_a_secret_not_in_the_brokers_form_is_refused(
    start_server: ServerFactory, secret: str, why: str
) -> None:
    server = start_server()
    body = subscription_body("http://127.0.0.1:9/hook", secret=secret)
    refusal = problem(call(server.url, "POST", "/v1/subscriptions", body), 400, "secret")
    assert why in refusal["detail"]
    assert "Standard Webhooks signing secret" in refusal["detail"]
    listed = ok(call(server.url, "GET", "/v1/subscriptions"))
    assert listed["subscriptions"] == []


async def test_a_subscription_created_paused_waits_for_resume(
    start_server: ServerFactory, start_receiver: ReceiverFactory
) -> None:
    server = start_server()
    waiting = await start_receiver()
    witness = await start_receiver()
    paused = ok(
        call(
            server.url,
            "POST",
            "/v1/subscriptions",
            subscription_body(waiting.url, topic="p", paused=True),
        ),
        201,
    )
    assert paused["paused"] is True
    ok(
        call(server.url, "POST", "/v1/subscriptions", subscription_body(witness.url, topic="p")),
        201,
    )
    sent = ok(call(server.url, "POST", "/v1/topics/p/messages", {"body": "held"}), 201)
    await witness.wait_for(1)
    message = ok(call(server.url, "GET", f"/v1/messages/{sent['id']}"))
    (held,) = [d for d in message["deliveries"] if d["subscription_id"] == paused["id"]]
    assert (held["state"], held["attempts"]) == ("pending", 0)
    assert waiting.attempts == []
    ok(call(server.url, "POST", f"/v1/subscriptions/{paused['id']}/resume"))
    (received,) = await waiting.wait_for(1)
    assert received.text == "held"


async def test_cli_creates_with_a_secret_and_paused(
    start_server: ServerFactory, start_receiver: ReceiverFactory
) -> None:
    server = start_server(env={"MQPY_ADMIN_KEY": ADMIN_KEY})
    secret = generate_secret()
    receiver = await start_receiver(verifying(secret))
    result = as_admin(
        server, "subscriptions", "create", receiver.url, "--topic", "c", "--secret", secret,
        "--paused", "--json",
    )  # fmt: skip
    made = cli_json(result)
    assert (made["secret"], made["paused"]) == (secret, True)
    assert "signed with the secret you gave" in result.stderr
    assert f"mqpy subscriptions resume {made['id']}" in result.stderr
    ok(call(server.url, "POST", "/v1/topics/c/messages", {"body": "x"}, key=ADMIN_KEY), 201)
    succeeded(as_admin(server, "subscriptions", "resume", str(made["id"])))
    await receiver.wait_for(1)
    assert [a.headers["mq-attempt"] for a in receiver.attempts] == ["1"]
    refused(
        as_admin(server, "subscriptions", "create", receiver.url, "--secret", "hunter2"),
        "it must start with 'whsec_'",
    )


def test_the_answer_lists_it_paused(start_server: ServerFactory) -> None:
    server = start_server()
    made = ok(
        call(
            server.url,
            "POST",
            "/v1/subscriptions",
            subscription_body("http://127.0.0.1:9/hook", paused=True),
        ),
        201,
    )
    shown = ok(call(server.url, "GET", f"/v1/subscriptions/{made['id']}"))
    assert shown["paused"] is True
