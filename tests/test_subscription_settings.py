"""Each per-subscription setting of POST /v1/subscriptions, as a user sees it through a
real broker and real receivers: its own retry budget and backoff, its cap on
deliveries in flight, its pace, pause and resume, deletion, and the broker's
--message-retention."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from tests.conftest import ReceiverFactory, ServerFactory
from tests.support.receiver import Behaviour, Crowd, Receiver
from tests.support.routing import SETTLE_SECONDS, Broker, texts, wait_for_texts


async def poll(
    probe: Callable[[], Awaitable[Any]], accept: Callable[[Any], bool], timeout: float, what: str
) -> Any:
    """Await `probe` until `accept` holds for its answer; fails after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if accept(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}: {value}")
        await asyncio.sleep(0.02)


def answering(status: int) -> Behaviour:
    async def behaviour(request: web.Request, number: int) -> web.StreamResponse:
        return web.Response(status=status)

    return behaviour


def failing_first(failures: int, status: int = 422) -> Behaviour:
    """Answers `status` to the first `failures` attempts, then acknowledges."""

    async def behaviour(request: web.Request, number: int) -> web.StreamResponse:
        return web.Response(status=status if number <= failures else 204)

    return behaviour


async def message(broker: Broker, message_id: str) -> dict[str, Any]:
    data: dict[str, Any] = await broker.ok("GET", f"/v1/messages/{message_id}")
    return data


def delivery_to(message: dict[str, Any], subscription_id: int) -> dict[str, Any] | None:
    found = [d for d in message["deliveries"] if d["subscription_id"] == subscription_id]
    assert len(found) <= 1, message
    return found[0] if found else None


async def dead_letters(broker: Broker, subscription_id: int) -> list[dict[str, Any]]:
    data = await broker.ok("GET", f"/v1/subscriptions/{subscription_id}/dead-letters")
    return list(data["dead_letters"])


def attempt_numbers(receiver: Receiver) -> list[str]:
    return [record.headers["mq-attempt"] for record in receiver.attempts]


# -- retry_policy ----------------------------------------------------------------------------


async def test_max_attempts_dead_letters_after_its_own_budget(
    start_server: ServerFactory, http: aiohttp.ClientSession, start_receiver: ReceiverFactory
) -> None:
    flags = ("--retry-base", "0.05", "--retry-max", "0.1", "--max-attempts", "10")
    broker = Broker(http, start_server(*flags).url)
    short_receiver = await start_receiver(answering(500))
    default_receiver = await start_receiver(answering(500))
    short = await broker.subscribe(short_receiver.url, "budget", retry_policy={"max_attempts": 2})
    default = await broker.subscribe(default_receiver.url, "budget")
    assert default["retry_policy"]["max_attempts"] is None, default
    message_id = await broker.publish_new("budget", "doomed")

    (letter,) = await poll(
        lambda: dead_letters(broker, short["id"]), lambda d: len(d) == 1, 15, "a dead letter"
    )
    assert (letter["message_id"], letter["attempts"], letter["last_status"]) == (
        message_id,
        2,
        500,
    ), letter
    # The other subscription, on the broker's budget of 10, goes on retrying well past 2.
    await default_receiver.wait_for_attempts(4, timeout=15)
    status = await message(broker, message_id)
    other = delivery_to(status, default["id"])
    assert other is not None, status
    assert other["state"] in ("pending", "waiting") and 4 <= other["attempts"] < 10, other
    assert await dead_letters(broker, default["id"]) == []
    print(f"dead after 2 attempts; the other subscription is at {other['attempts']} attempts")
    dead = delivery_to(status, short["id"])
    assert dead is not None and dead["state"] == "dead" and dead["attempts"] == 2, status
    assert attempt_numbers(short_receiver) == ["1", "2"], "attempted again after its budget"

    # The broker's own budget still holds for the subscription without a policy.
    (late,) = await poll(
        lambda: dead_letters(broker, default["id"]), lambda d: len(d) == 1, 20, "its dead letter"
    )
    assert (late["attempts"], late["last_status"]) == (10, 500), late
    assert attempt_numbers(default_receiver) == [str(n) for n in range(1, 11)]
    assert attempt_numbers(short_receiver) == ["1", "2"]


async def test_backoff_bounds_override_the_brokers(
    start_server: ServerFactory, http: aiohttp.ClientSession, start_receiver: ReceiverFactory
) -> None:
    # The broker's own backoff is 5 s and up: a retry within half a second on its
    # settings is a 1-in-10 chance, three in a row about 1 in 8000.
    broker = Broker(http, start_server("--retry-base", "5", "--retry-max", "60").url)
    policies: dict[str, dict[str, float]] = {
        "both": {"min_backoff_seconds": 0.05, "max_backoff_seconds": 0.1},
        "max only": {"max_backoff_seconds": 0.1},
        "min only": {"min_backoff_seconds": 0.05},
    }
    receivers: dict[str, Receiver] = {}
    for name, policy in policies.items():
        # 422: this message's fault, so the receiver as a whole is not paused.
        receivers[name] = await start_receiver(failing_first(3))
        created = await broker.subscribe(receivers[name].url, "backoff", retry_policy=policy)
        assert {k: created["retry_policy"][k] for k in policy} == policy, created
    published = time.monotonic()
    await broker.publish_new("backoff", "try again soon")

    for name, receiver in receivers.items():
        try:
            await receiver.wait_for(1, timeout=3)
        except TimeoutError:
            late = [round(record.at - published, 3) for record in receiver.attempts]
            raise AssertionError(f"{name}: not acknowledged in 3 s; attempts at {late}") from None
        times = [record.at for record in receiver.attempts]
        gaps = [round(b - a, 3) for a, b in itertools.pairwise(times)]
        print(f"{name}: attempt gaps {gaps}, done {times[-1] - published:.3f} s after publish")
        assert attempt_numbers(receiver) == ["1", "2", "3", "4"], name
        # Ceilings: 0.05/0.1/0.2 s for "min only", 0.1 s otherwise, plus scheduling.
        assert max(gaps) < 0.5, (name, gaps)
        assert times[-1] - published < 2.0, (name, times[-1] - published)


async def test_max_backoff_also_bounds_the_wait_after_a_5xx(
    start_server: ServerFactory, http: aiohttp.ClientSession, start_receiver: ReceiverFactory
) -> None:
    broker = Broker(http, start_server("--retry-base", "5", "--retry-max", "60").url)
    receiver = await start_receiver(failing_first(4, status=503))
    policy = {"min_backoff_seconds": 0.05, "max_backoff_seconds": 0.1}
    await broker.subscribe(receiver.url, "backoff5xx", retry_policy=policy)
    published = time.monotonic()
    await broker.publish_new("backoff5xx", "try again soon")
    # Four waits of at most 0.1 s each; on the broker's 5 s backoff (pauses of up to
    # 5, 10, 20 and 40 s) all four fit in 2.5 s about once in 50000 runs.
    try:
        await receiver.wait_for(1, timeout=2.5)
    finally:
        times = [round(record.at - published, 3) for record in receiver.attempts]
        print(f"attempts after a 503 came at {times} s")
    assert attempt_numbers(receiver) == ["1", "2", "3", "4", "5"]


# -- max_concurrency -------------------------------------------------------------------------


async def test_max_concurrency_caps_deliveries_in_flight(
    start_server: ServerFactory, http: aiohttp.ClientSession, start_receiver: ReceiverFactory
) -> None:
    broker = Broker(http, start_server("--workers", "32", "--jobs", "32").url)
    capped_behaviour, free_behaviour = Crowd(0.2), Crowd(0.2)
    capped = await start_receiver(capped_behaviour)
    free = await start_receiver(free_behaviour)
    await broker.subscribe(capped.url, "slow", max_concurrency=2)
    await broker.subscribe(free.url, "slow")
    started = time.monotonic()
    bodies = [f"m-{n}" for n in range(10)]
    await broker.publish_texts("slow", bodies)

    await wait_for_texts(free, bodies, timeout=10)
    await wait_for_texts(capped, bodies, timeout=10)
    took = time.monotonic() - started
    print(f"most in flight: capped {capped_behaviour.peak}, free {free_behaviour.peak}")
    print(f"the capped subscription took {took:.2f} s")
    assert capped_behaviour.peak == 2, f"{capped_behaviour.peak} in flight with max_concurrency 2"
    assert free_behaviour.peak > 2, f"only {free_behaviour.peak} in flight without a cap"
    assert took >= 10 * 0.2 / 2 - 0.05, took


async def test_max_concurrency_above_the_brokers_receiver_concurrency(
    start_server: ServerFactory, http: aiohttp.ClientSession, start_receiver: ReceiverFactory
) -> None:
    flags = ("--workers", "32", "--jobs", "32", "--receiver-concurrency", "2")
    broker = Broker(http, start_server(*flags).url)
    behaviour = Crowd(0.2)
    receiver = await start_receiver(behaviour)
    created = await broker.subscribe(receiver.url, "wide", max_concurrency=6)
    assert created["max_concurrency"] == 6, created
    bodies = [f"w-{n}" for n in range(12)]
    await broker.publish_texts("wide", bodies)
    await wait_for_texts(receiver, bodies, timeout=10)
    print(f"most in flight with max_concurrency 6: {behaviour.peak}")
    assert behaviour.peak == 6, f"{behaviour.peak} in flight with max_concurrency 6"


# -- max_per_second --------------------------------------------------------------------------

RATE = 10.0
BURST = 10  # the token bucket holds one second's worth


def starts_too_early(times: list[float], rate: float, burst: int, slack: float) -> list[str]:
    """Arrivals that came sooner than a bucket of `burst` tokens refilled at `rate`
    allows: the k-th (0-based) needs k + 1 tokens, so it may not come before
    (k + 1 - burst) / rate seconds after the first."""
    first = times[0]
    return [
        f"#{k} at {at - first:.3f} s (not before {(k + 1 - burst) / rate:.3f} s)"
        for k, at in enumerate(times)
        if at - first < (k + 1 - burst) / rate - slack
    ]


async def test_max_per_second_paces_deliveries_and_patch_null_lifts_it(
    start_server: ServerFactory, http: aiohttp.ClientSession, start_receiver: ReceiverFactory
) -> None:
    broker = Broker(http, start_server("--workers", "16", "--jobs", "32").url)
    paced = await start_receiver()
    unpaced = await start_receiver()
    paced_sub = await broker.subscribe(paced.url, "paced", max_per_second=RATE)
    await broker.subscribe(unpaced.url, "paced")
    bodies = [f"p-{n}" for n in range(30)]
    published = time.monotonic()
    await broker.publish_texts("paced", bodies)

    await wait_for_texts(unpaced, bodies, timeout=10)
    unpaced_took = max(r.at for r in unpaced.received) - published
    await wait_for_texts(paced, bodies, timeout=10)
    times = sorted(record.at for record in paced.received)
    spread = times[-1] - times[0]
    print(f"30 messages: unpaced in {unpaced_took:.3f} s, paced spread over {spread:.3f} s")
    assert unpaced_took < 1.0, unpaced_took
    assert spread >= (len(bodies) - BURST) / RATE - 0.2, spread
    assert starts_too_early(times, RATE, BURST, slack=0.05) == []

    changed = await broker.ok(
        "PATCH", f"/v1/subscriptions/{paced_sub['id']}", {"max_per_second": None}
    )
    assert changed["max_per_second"] is None, changed
    more = [f"q-{n}" for n in range(30)]
    published = time.monotonic()
    await broker.publish_texts("paced", more)
    await wait_for_texts(paced, more, timeout=10)
    lifted_took = max(r.at for r in paced.received if r.text in more) - published
    print(f"after PATCH null: 30 in {lifted_took:.3f} s")
    assert lifted_took < 1.0, lifted_took


async def test_max_per_second_holds_from_the_first_delivery(
    start_server: ServerFactory, http: aiohttp.ClientSession, start_receiver: ReceiverFactory
) -> None:
    """With more room per receiver than the bucket's burst (--workers 32 lets one
    receiver hold 16), the first deliveries must still keep to the burst."""
    broker = Broker(http, start_server("--workers", "32", "--jobs", "32").url)
    paced = await start_receiver()
    await broker.subscribe(paced.url, "burst", max_per_second=RATE)
    bodies = [f"b-{n}" for n in range(30)]
    await broker.publish_texts("burst", bodies)
    await wait_for_texts(paced, bodies, timeout=10)
    times = sorted(record.at for record in paced.received)
    print(f"spread {times[-1] - times[0]:.3f} s; first 16 within {times[15] - times[0]:.3f} s")
    assert starts_too_early(times, RATE, BURST, slack=0.05) == []


# -- --message-retention ---------------------------------------------------------------------


async def test_a_delivered_message_is_forgotten_after_the_retention(
    start_server: ServerFactory, http: aiohttp.ClientSession, start_receiver: ReceiverFactory
) -> None:
    broker = Broker(http, start_server("--message-retention", "1s").url)
    receiver = await start_receiver()
    await broker.subscribe(receiver.url, "kept")
    message_id = await broker.publish_new("kept", "soon forgotten")
    await receiver.wait_for(1, timeout=5)

    status = await poll(
        lambda: message(broker, message_id),
        lambda m: [d["state"] for d in m["deliveries"]] == ["delivered"],
        5,
        "the delivery to show as delivered",
    )
    assert status["body"] == "soon forgotten"
    path = f"/v1/messages/{message_id}"
    gone = await poll(lambda: broker.call("GET", path), lambda a: a.status != 200, 5, "a 404")
    kept_for = time.monotonic() - receiver.received[0].at
    print(f"forgotten {kept_for:.3f} s after its delivery")
    # The sweeper runs every half retention: gone after 1 to 1.5 s (and a poll).
    assert kept_for >= 0.95, f"forgotten {kept_for:.3f} s after delivery, before 1 s"
    problem = gone.problem(404)
    assert problem["type"].endswith("/unknown-message"), problem
    assert problem["id"] == message_id and problem["instance"] == path, problem


# -- pause, resume, delete -------------------------------------------------------------------


async def test_pause_keeps_messages_and_resume_delivers_them_in_key_order(
    start_server: ServerFactory, http: aiohttp.ClientSession, start_receiver: ReceiverFactory
) -> None:
    broker = Broker(http, start_server("--workers", "8", "--jobs", "16").url)
    receiver = await start_receiver()
    sub = await broker.subscribe(receiver.url, "held")
    paused = await broker.ok("POST", f"/v1/subscriptions/{sub['id']}/pause")
    assert paused["paused"] is True, paused
    order = [f"k-{n}" for n in range(6)]
    ids = [await broker.publish_new("held", text, ordering_key="K") for text in order]

    await asyncio.sleep(SETTLE_SECONDS)
    assert receiver.attempts == [], f"a paused subscription got {texts(receiver.attempts)}"
    for message_id in ids:
        delivery = delivery_to(await message(broker, message_id), sub["id"])
        assert delivery is not None and delivery["state"] == "pending", delivery
        assert delivery["attempts"] == 0, delivery

    resumed = await broker.ok("POST", f"/v1/subscriptions/{sub['id']}/resume")
    assert resumed["paused"] is False, resumed
    await wait_for_texts(receiver, order, timeout=10)
    await asyncio.sleep(SETTLE_SECONDS)
    assert texts(receiver.attempts) == order


async def test_deleting_a_subscription_drops_its_pending_deliveries(
    start_server: ServerFactory, http: aiohttp.ClientSession, start_receiver: ReceiverFactory
) -> None:
    broker = Broker(http, start_server().url)
    doomed_receiver = await start_receiver()
    staying_receiver = await start_receiver()
    doomed = await broker.subscribe(doomed_receiver.url, "dropped")
    staying = await broker.subscribe(staying_receiver.url, "dropped")
    await broker.ok("POST", f"/v1/subscriptions/{doomed['id']}/pause")
    bodies = [f"d-{n}" for n in range(5)]
    ids = await broker.publish_texts("dropped", bodies)
    await wait_for_texts(staying_receiver, bodies, timeout=10)
    for message_id in ids:
        delivery = delivery_to(await message(broker, message_id), doomed["id"])
        assert delivery is not None and delivery["state"] == "pending", delivery

    await broker.ok("DELETE", f"/v1/subscriptions/{doomed['id']}", status=204)
    for message_id in ids:
        status = await message(broker, message_id)
        assert delivery_to(status, doomed["id"]) is None, status
        kept = delivery_to(status, staying["id"])
        assert kept is not None and kept["state"] == "delivered", status
    (await broker.call("GET", f"/v1/subscriptions/{doomed['id']}")).problem(404)
    await asyncio.sleep(SETTLE_SECONDS)
    assert doomed_receiver.attempts == [], texts(doomed_receiver.attempts)
