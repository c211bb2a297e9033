"""Per-subscription settings as a user sees them through a real broker and real
receivers: a pace set and lifted with PATCH, and the broker's --message-retention.
What the settings do to delivery (retry budget and backoff, max_concurrency, pace,
pause and resume, deletion) is tested in-process in tests/delivery/test_dispatch_*.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from tests.conftest import ReceiverFactory, ServerFactory
from tests.support.pacing import starts_too_early
from tests.support.routing import Broker, wait_for_texts


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


async def message(broker: Broker, message_id: str) -> dict[str, Any]:
    data: dict[str, Any] = await broker.ok("GET", f"/v1/messages/{message_id}")
    return data


# -- max_per_second --------------------------------------------------------------------------

RATE = 10.0
BURST = 10  # the token bucket holds one second's worth


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
