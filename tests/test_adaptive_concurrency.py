"""Adaptive concurrency per receiver, end to end, on a broker with its default flags: a
fast receiver is given more deliveries at once, one that slows down fewer, one that
fails everything is probed one delivery at a time, a flaky one keeps getting what it
can take, and none of them holds up the others."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from mqpy.delivery.window import INITIAL_WINDOW
from tests.conftest import ReceiverFactory, ServerFactory
from tests.support.client import SeedClient
from tests.support.load import FAST_RETRIES, publish_many, wait_for_ids, wait_until
from tests.support.receiver import Crowd

# Slow (`make check` skips it; `make test` runs it): many deliveries to slow, flaky receivers.
pytestmark = pytest.mark.slow


async def receiver_states(http: aiohttp.ClientSession, url: str) -> dict[int, dict[str, Any]]:
    async with http.get(url + "/v1/status") as answer:
        assert answer.status == 200
        feed = await answer.json()
    return {receiver["id"]: receiver for receiver in feed["receivers"]}


# In a group each process keeps its own window (docs/operations.md, "What stays per node
# in a group"): the receiver holds both, and the status shows the answering process's.
@pytest.mark.one_process
async def test_a_fast_receiver_is_given_more_deliveries_at_once(
    start_server: ServerFactory, http: aiohttp.ClientSession, start_receiver: ReceiverFactory
) -> None:
    server = start_server()
    client = SeedClient(http, server.url)
    crowd = Crowd(delay=0.02)
    receiver = await start_receiver(crowd)
    receiver_id = await client.connect_receiver(receiver.url)
    before = await receiver_states(http, server.url)
    assert before[receiver_id]["window"] is None, "no window before its first answer"
    sender = await client.connect_sender()
    ids = await publish_many(client, sender, [f"fast {n}" for n in range(1500)])
    await wait_for_ids(receiver, ids, timeout=60)
    window = (await receiver_states(http, server.url))[receiver_id]["window"]
    print(f"a receiver answering in 20 ms held up to {crowd.peak} at once; window {window}")
    assert window >= crowd.peak, "the status shows the window the receiver was given"
    assert crowd.peak >= 4 * INITIAL_WINDOW, (
        f"a receiver answering every delivery in 20 ms, with a backlog, never held more "
        f"than {crowd.peak} at once (its window starts at {INITIAL_WINDOW})"
    )


async def test_a_receiver_that_slows_down_is_given_fewer(
    start_server: ServerFactory, http: aiohttp.ClientSession, start_receiver: ReceiverFactory
) -> None:
    client = SeedClient(http, start_server().url)
    crowd = Crowd(delay=0.01)
    receiver = await start_receiver(crowd)
    await client.connect_receiver(receiver.url)
    sender = await client.connect_sender()
    ids = await publish_many(client, sender, [f"quick {n}" for n in range(1500)])
    await wait_for_ids(receiver, ids, timeout=60)
    quick_peak = crowd.peak
    assert quick_peak >= 4 * INITIAL_WINDOW, f"the quick receiver peaked at {quick_peak}"
    # Now every answer takes 30 times as long: the receiver is struggling.
    crowd.delay = 0.3
    await publish_many(client, sender, [f"struggling {n}" for n in range(400)])
    await asyncio.sleep(4.0)  # a dozen round trips of 0.3 s: time for the window to shrink
    crowd.reset()
    await asyncio.sleep(2.0)
    print(f"held {quick_peak} at once while answering in 10 ms, {crowd.peak} at 300 ms")
    assert crowd.peak <= quick_peak // 4, (
        f"a receiver that went from 10 ms to 300 ms per answer still held {crowd.peak} "
        f"deliveries at once (it held {quick_peak} while quick)"
    )
    assert crowd.peak >= 1, "the slow receiver must still get deliveries"


async def test_a_receiver_that_fails_everything_is_probed_one_at_a_time(
    start_server: ServerFactory, http: aiohttp.ClientSession, start_receiver: ReceiverFactory
) -> None:
    server = start_server(*FAST_RETRIES)
    client = SeedClient(http, server.url)
    crowd = Crowd(delay=0.005, status=503)
    receiver = await start_receiver(crowd)
    await client.connect_receiver(receiver.url)
    sender = await client.connect_sender()
    await publish_many(client, sender, [f"doomed {n}" for n in range(200)])
    await wait_until(lambda: crowd.answered >= 20, 10, "the first failed attempts")
    crowd.reset()
    before = crowd.answered
    await asyncio.sleep(3.0)
    probes = crowd.answered - before
    print(f"{probes} probes in 3 s, at most {crowd.peak} at once")
    assert crowd.peak <= 1, f"a receiver failing everything was sent {crowd.peak} at once"
    assert probes >= 1, "a failing receiver must still be probed"
    # Paused between probes (pauses of up to 0.5 s with these flags), not hammered.
    assert probes <= 60, f"{probes} attempts in 3 s: the failing receiver was not paused"
    (shown,) = (await receiver_states(http, server.url)).values()
    assert (shown["state"], shown["window"]) == ("failing", 1), shown


async def test_a_flaky_receiver_keeps_getting_what_it_can_take(
    start_server: ServerFactory, http: aiohttp.ClientSession, start_receiver: ReceiverFactory
) -> None:
    """Three answers in five fail at random (500, 503, 429, a dropped connection);
    every message gets through, several at a time, without the receiver being shut out."""
    server = start_server(*FAST_RETRIES, "--max-attempts", "30")
    client = SeedClient(http, server.url)
    luck = random.Random(9)
    in_flight = 0
    peak = 0

    async def flaky(request: web.Request, number: int) -> web.StreamResponse:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await asyncio.sleep(0.005)
            roll = luck.random()
            if roll < 0.15:
                assert request.transport is not None
                request.transport.close()  # the connection drops, no answer
            elif roll < 0.60:
                return web.Response(status=luck.choice((500, 503, 429)))
            return web.Response(status=204)
        finally:
            in_flight -= 1

    receiver = await start_receiver(flaky)
    await client.connect_receiver(receiver.url)
    sender = await client.connect_sender()
    started = time.monotonic()
    ids = await publish_many(client, sender, [f"flaky {n}" for n in range(500)])
    await wait_for_ids(receiver, ids, timeout=90)
    took = time.monotonic() - started
    print(
        f"500 messages through a receiver failing 60% of attempts: {took:.1f} s, "
        f"{len(receiver.attempts)} attempts, up to {peak} at once"
    )
    assert peak >= 2, "a flaky receiver should still get several deliveries at once"


async def test_hung_requests_do_not_hold_back_a_receiver_that_answers_the_others(
    start_server: ServerFactory, http: aiohttp.ClientSession, start_receiver: ReceiverFactory
) -> None:
    """Its first requests hang past the delivery timeout; for a while it answers every
    other one quickly with 500. Its window falls to one, yet the hung requests must not
    count against it while it answers: attempts keep arriving before the first hang
    times out."""
    server = start_server(*FAST_RETRIES, "--max-attempts", "100", "--delivery-timeout", "3s")
    client = SeedClient(http, server.url)
    first_at: list[float] = []

    async def hangs_then_fails(request: web.Request, number: int) -> web.StreamResponse:
        now = time.monotonic()
        if not first_at:
            first_at.append(now)
        if number <= 3:
            await asyncio.sleep(4.0)  # the broker gave up at 3 s
        if now - first_at[0] < 4.0:
            return web.Response(status=500)
        return web.Response(status=204)

    receiver = await start_receiver(hangs_then_fails)
    await client.connect_receiver(receiver.url)
    sender = await client.connect_sender()
    ids = await publish_many(client, sender, [f"m{n}" for n in range(20)])
    await wait_for_ids(receiver, ids, timeout=60)
    before_timeout = [r for r in receiver.attempts if r.at - first_at[0] < 2.9]
    print(f"{len(before_timeout)} attempts arrived while three requests hung")
    # Retried 500s alone come every 50 to 500 ms (FAST_RETRIES); held back by the hung
    # requests, only the first window's worth arrived before the timeout.
    assert len(before_timeout) >= 15, len(before_timeout)


async def test_failing_and_struggling_receivers_do_not_hold_up_a_fast_one(
    start_server: ServerFactory, http: aiohttp.ClientSession, start_receiver: ReceiverFactory
) -> None:
    client = SeedClient(http, start_server(*FAST_RETRIES).url)
    failing = await start_receiver(Crowd(delay=0.001, status=500))
    struggling = await start_receiver(Crowd(delay=2.0))
    fast = await start_receiver()
    for receiver in (failing, struggling, fast):
        await client.connect_receiver(receiver.url)
    sender = await client.connect_sender()
    started = time.monotonic()
    ids = await publish_many(client, sender, [f"mixed {n}" for n in range(1000)])
    await wait_for_ids(fast, ids, timeout=30)
    took = time.monotonic() - started
    print(f"the fast receiver had all 1,000 in {took:.2f} s beside a failing and a slow one")
    assert len(struggling.attempts) < 100, "the 2 s receiver should have been given few"
    assert took < 15, f"the fast receiver took {took:.1f} s for 1,000 messages"
