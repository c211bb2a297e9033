"""Delivery semantics end to end: the real server, real receivers, nothing but HTTP.

Fan-out, waiting messages, disconnects, retries (status, timeout, Retry-After,
redirects), dead letters and redrive, restarts and graceful shutdown, and the
`--workers` bound on deliveries in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import ReceiverFactory, ServerFactory
from tests.support.client import SeedClient
from tests.support.load import (
    FAST_RETRIES,
    duplicates,
    publish_many,
    unused_port,
    wait_for_dead_letters,
    wait_for_ids,
    wait_until,
)
from tests.support.receiver import Behaviour, Received


class Answer:
    """A receiver behaviour that answers every delivery with `status`, until changed."""

    def __init__(self, status: int) -> None:
        self.status = status

    async def __call__(self, request: web.Request, number: int) -> web.StreamResponse:
        return web.Response(status=self.status)


def slow(seconds: float) -> Behaviour:
    """A receiver that takes `seconds` to acknowledge each delivery."""

    async def answer(request: web.Request, number: int) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return web.Response(status=204)

    return answer


def attempt_numbers(records: list[Received]) -> list[str]:
    return [record.headers["mq-attempt"] for record in records]


async def test_every_receiver_gets_every_message(
    client: SeedClient, start_receiver: ReceiverFactory
) -> None:
    receivers = [await start_receiver() for _ in range(3)]
    for receiver in receivers:
        await client.connect_receiver(receiver.url)
    sender = await client.connect_sender()
    bodies = [f"fan-out {n}" for n in range(50)]
    ids = await publish_many(client, sender, bodies)
    body_of = dict(zip(ids, bodies, strict=True))
    for receiver in receivers:
        counts = await wait_for_ids(receiver, ids, timeout=30)
        assert counts.keys() == set(ids)
        assert duplicates(counts) == 0, "healthy receivers should not see redeliveries"
        for record in receiver.received:
            assert record.body == {"body": body_of[record.message_id]}


async def test_receivers_connecting_after_a_publish_are_treated_the_same(
    client: SeedClient, start_receiver: ReceiverFactory
) -> None:
    # Published with no receiver: none connecting later gets it unless it starts
    # earlier; two that do, one after the other, both get every message.
    sender = await client.connect_sender()
    bodies = [f"before {n}" for n in range(10)]
    ids = [(await client.send(sender, body))["message_id"] for body in bodies]
    plain = await start_receiver()
    await client.connect_receiver(plain.url)
    first, second = await start_receiver(), await start_receiver()
    await client.connect_receiver(first.url, start_at="earliest")
    await client.connect_receiver(second.url, START_AT="earliest")  # keys fold case
    for receiver in (first, second):
        received = await receiver.wait_for(10)
        # Every one, each with its own body; several go at once, so in any order.
        assert {record.message_id: record.text for record in received} == dict(
            zip(ids, bodies, strict=True)
        )
    after = (await client.send(sender, "after"))["message_id"]
    received = await plain.wait_for(1)
    assert [record.message_id for record in received] == [after]


async def test_disconnected_receiver_gets_nothing_more(
    client: SeedClient, start_receiver: ReceiverFactory
) -> None:
    # A receiver that is down when its deliveries are due; another, healthy one shows
    # when the broker has had every chance to deliver.
    control = await start_receiver()
    await client.connect_receiver(control.url)
    gone_port = unused_port()
    gone_id = await client.connect_receiver(f"http://127.0.0.1:{gone_port}/hook")
    sender = await client.connect_sender()
    first = await publish_many(client, sender, [f"before {n}" for n in range(5)])
    await wait_for_ids(control, first, timeout=30)

    await client.disconnect(gone_id)
    revived = await start_receiver(port=gone_port)
    later = await publish_many(client, sender, [f"after {n}" for n in range(5)])
    await wait_for_ids(control, later, timeout=30)
    await asyncio.sleep(1.5)  # three times --retry-max: any retry would have come by now
    assert revived.attempts == [], "a disconnected receiver must get nothing more"


# Deliveries in flight are watched by polling `receiver.attempts`: the receiver's
# wait_for_attempts wakes only when a handler returns, too late for a slow receiver.


# In a group what another process claimed before a disconnect through this one may
# still go out within a second (docs/operations.md, "What the nodes share").
@pytest.mark.one_process
async def test_disconnect_drops_deliveries_already_claimed_in_memory(
    start_server: ServerFactory, http: aiohttp.ClientSession, start_receiver: ReceiverFactory
) -> None:
    # One worker, room for four of this receiver's deliveries: while the first is in
    # flight the other three are claimed and wait in memory for the worker.
    server = start_server(
        "--workers", "1", "--jobs", "5", "--receiver-concurrency", "4", *FAST_RETRIES
    )
    client = SeedClient(http, server.url)
    receiver = await start_receiver(slow(1.0))
    receiver_id = await client.connect_receiver(receiver.url)
    sender = await client.connect_sender()
    await publish_many(client, sender, [f"queued {n}" for n in range(4)])
    await wait_until(lambda: len(receiver.attempts) >= 1, 10, "the first delivery")
    await asyncio.sleep(0.2)  # let the claimer take the other three into memory
    await client.disconnect(receiver_id)
    await receiver.wait_for(1, timeout=10)  # the one in flight, answered after 1 s
    await asyncio.sleep(1.0)  # the rest, were they still claimed, would follow at once
    assert len(receiver.attempts) == 1, (
        f"after its disconnect the receiver got {len(receiver.attempts) - 1} more "
        f"deliveries; only the one already in flight may finish\n{server.log}"
    )


async def test_failed_delivery_is_retried_with_the_same_webhook_id(
    client: SeedClient, start_receiver: ReceiverFactory
) -> None:
    async def fail_twice(request: web.Request, number: int) -> web.StreamResponse:
        return web.Response(status=500 if number <= 2 else 204)

    receiver = await start_receiver(fail_twice)
    await client.connect_receiver(receiver.url)
    sender = await client.connect_sender()
    before = time.time()
    message_id = (await client.send(sender, "try again"))["message_id"]
    (delivery,) = await receiver.wait_for(1)
    assert attempt_numbers(receiver.attempts) == ["1", "2", "3"]
    assert {record.message_id for record in receiver.attempts} == {message_id}
    assert delivery.body == {"body": "try again"}
    for record in receiver.attempts:
        assert int(before) - 1 <= int(record.headers["webhook-timestamp"]) <= time.time() + 1


async def test_a_timeout_counts_as_a_failed_attempt(
    start_server: ServerFactory, http: aiohttp.ClientSession, start_receiver: ReceiverFactory
) -> None:
    server = start_server("--delivery-timeout", "0.3s", *FAST_RETRIES)
    client = SeedClient(http, server.url)

    async def hang_first(request: web.Request, number: int) -> web.StreamResponse:
        if number == 1:
            await asyncio.sleep(1.0)
        return web.Response(status=204)

    receiver = await start_receiver(hang_first)
    await client.connect_receiver(receiver.url)
    sender = await client.connect_sender()
    message_id = (await client.send(sender, "too slow"))["message_id"]
    first, second = (await receiver.wait_for_attempts(2, timeout=10))[:2]
    assert attempt_numbers([first, second]) == ["1", "2"]
    assert first.message_id == second.message_id == message_id
    assert second.at - first.at >= 0.25, "the retry came before the 0.3 s timeout expired"


@pytest.mark.parametrize("retry_max", ["5", "0.5"])
@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_is_honoured(
    status: int,
    retry_max: str,
    start_server: ServerFactory,
    http: aiohttp.ClientSession,
    start_receiver: ReceiverFactory,
) -> None:
    # Without Retry-After the next attempt would come within --retry-base (50 ms); the
    # receiver's Retry-After holds even when it is longer than --retry-max.
    server = start_server("--retry-base", "0.05", "--retry-max", retry_max)
    client = SeedClient(http, server.url)

    async def busy_once(request: web.Request, number: int) -> web.StreamResponse:
        if number == 1:
            return web.Response(status=status, headers={"Retry-After": "1"})
        return web.Response(status=204)

    receiver = await start_receiver(busy_once)
    await client.connect_receiver(receiver.url)
    sender = await client.connect_sender()
    await client.send(sender, "later, please")
    await receiver.wait_for(1, timeout=15)
    first, second = receiver.attempts[:2]
    assert attempt_numbers([first, second]) == ["1", "2"]
    assert second.at - first.at >= 0.95


async def test_retry_after_pauses_the_receiver_past_retry_max(
    start_server: ServerFactory, http: aiohttp.ClientSession, start_receiver: ReceiverFactory
) -> None:
    # The receiver as a whole is paused for as long as it asked, not --retry-max: a
    # message published during the pause waits for it too.
    server = start_server("--retry-base", "0.05", "--retry-max", "0.5")
    client = SeedClient(http, server.url)

    async def busy_once(request: web.Request, number: int) -> web.StreamResponse:
        if number == 1:
            return web.Response(status=503, headers={"Retry-After": "1"})
        return web.Response(status=204)

    receiver = await start_receiver(busy_once)
    await client.connect_receiver(receiver.url)
    sender = await client.connect_sender()
    await client.send(sender, "first")
    (refused,) = await receiver.wait_for_attempts(1)
    await client.send(sender, "second, during the pause")
    await receiver.wait_for(2, timeout=15)
    after = receiver.attempts[1:]
    assert min(record.at for record in after) - refused.at >= 0.95, [
        (record.text, round(record.at - refused.at, 3)) for record in after
    ]


async def test_redirects_are_not_followed(
    client: SeedClient, start_receiver: ReceiverFactory
) -> None:
    elsewhere = await start_receiver()

    async def redirect_once(request: web.Request, number: int) -> web.StreamResponse:
        if number == 1:
            return web.Response(status=307, headers={"Location": elsewhere.url})
        return web.Response(status=204)

    receiver = await start_receiver(redirect_once)
    await client.connect_receiver(receiver.url)
    sender = await client.connect_sender()
    message_id = (await client.send(sender, "stay here"))["message_id"]
    (delivery,) = await receiver.wait_for(1)
    assert delivery.message_id == message_id
    assert attempt_numbers(receiver.attempts) == ["1", "2"], "a 307 is a failed attempt"
    assert elsewhere.attempts == [], "the broker followed the receiver's redirect"


async def test_a_paused_subscriptions_message_expires_at_max_age(
    start_server: ServerFactory, http: aiohttp.ClientSession, start_receiver: ReceiverFactory
) -> None:
    # Nothing is ever attempted for a paused subscription, so no failure judges the
    # message's age: it must dead-letter on time all the same.
    server = start_server("--max-age", "2s", *FAST_RETRIES)
    client = SeedClient(http, server.url)
    receiver = await start_receiver()
    receiver_id = await client.connect_receiver(receiver.url)
    async with http.post(f"{server.url}/v1/subscriptions/{receiver_id}/pause") as response:
        assert response.status == 200, await response.text()
    sender = await client.connect_sender()
    published = time.time()
    message_id = (await client.send(sender, "nobody will try me"))["message_id"]
    (dead,) = await wait_for_dead_letters(client, 1, timeout=10)
    assert dead["message_id"] == message_id
    assert (dead["attempts"], dead["receiver_id"]) == (0, receiver_id)
    assert "max-age" in dead["last_error"], dead
    # On time: after its two seconds, and within the second the check takes.
    assert 2.0 <= dead["dead_at"] - published <= 4.0, dead["dead_at"] - published
    assert receiver.attempts == []


async def test_a_message_held_back_by_a_receivers_pause_expires_at_max_age(
    start_server: ServerFactory, http: aiohttp.ClientSession, start_receiver: ReceiverFactory
) -> None:
    # A receiver that asked for an hour's pause gets nothing meanwhile; what waits for
    # it dead-letters at --max-age, not when the pause ends.
    server = start_server("--max-age", "2s", *FAST_RETRIES)
    client = SeedClient(http, server.url)

    async def busy(request: web.Request, number: int) -> web.StreamResponse:
        return web.Response(status=503, headers={"Retry-After": "3600"})

    receiver = await start_receiver(busy)
    await client.connect_receiver(receiver.url)
    sender = await client.connect_sender()
    await client.send(sender, "asks for the pause")
    await receiver.wait_for_attempts(1)
    published = time.time()
    waiting = (await client.send(sender, "waits out the pause"))["message_id"]
    letters = await wait_for_dead_letters(client, 2, timeout=10)
    (dead,) = [letter for letter in letters if letter["message_id"] == waiting]
    assert dead["attempts"] == 0
    assert 2.0 <= dead["dead_at"] - published <= 4.0, dead["dead_at"] - published
    assert len(receiver.attempts) == 1


async def test_dead_letters_are_listed_and_redriven(
    start_server: ServerFactory, http: aiohttp.ClientSession, start_receiver: ReceiverFactory
) -> None:
    server = start_server("--max-attempts", "3", *FAST_RETRIES)
    client = SeedClient(http, server.url)
    first_answer, second_answer = Answer(500), Answer(500)
    first = await start_receiver(first_answer)
    second = await start_receiver(second_answer)
    first_id = await client.connect_receiver(first.url)
    second_id = await client.connect_receiver(second.url)
    sender = await client.connect_sender()
    message_id = (await client.send(sender, "undeliverable"))["message_id"]

    letters = await wait_for_dead_letters(client, 2)
    assert len(letters) == 2
    assert {letter["receiver_id"] for letter in letters} == {first_id, second_id}
    for letter in letters:
        assert letter["message_id"] == message_id
        assert letter["attempts"] == 3
        assert letter["body"] == "undeliverable"
        assert isinstance(letter["last_error"], str) and "500" in letter["last_error"]
        assert abs(letter["dead_at"] - time.time()) < 60
    assert len(first.attempts) == len(second.attempts) == 3

    first_answer.status = 204
    assert await client.redrive(first_id) == 1
    assert [letter["receiver_id"] for letter in await client.dead_letters()] == [second_id]
    (delivery,) = await first.wait_for(1)
    assert delivery.message_id == message_id
    assert delivery.headers["mq-attempt"] == "1"
    assert len(second.attempts) == 3, "redriving one receiver's dead letters touched another's"

    second_answer.status = 204
    assert await client.redrive() == 1
    assert await client.dead_letters() == []
    (delivery,) = await second.wait_for(1)
    assert delivery.message_id == message_id
    assert delivery.headers["mq-attempt"] == "1"
    assert await client.redrive() == 0


async def test_connections_and_messages_survive_a_clean_restart(
    start_server: ServerFactory, http: aiohttp.ClientSession, start_receiver: ReceiverFactory
) -> None:
    server = start_server("--shutdown-grace", "2s", *FAST_RETRIES)
    client = SeedClient(http, server.url)
    receiver = await start_receiver()
    await client.connect_receiver(receiver.url)
    sender = await client.connect_sender()
    warm_up = await publish_many(client, sender, ["before the restart"])
    await wait_for_ids(receiver, warm_up, timeout=10)

    await receiver.stop()  # down: these wait, retrying, across the restart
    ids = await publish_many(client, sender, [f"undelivered {n}" for n in range(20)])
    assert await asyncio.to_thread(server.terminate) == 0, server.log
    await asyncio.to_thread(server.restart)
    await receiver.start(receiver.port)
    await wait_for_ids(receiver, ids, timeout=30)

    async with aiohttp.ClientSession() as fresh:
        after = SeedClient(fresh, server.url)
        answer = await after.send(sender, "after the restart")
        counts = await wait_for_ids(receiver, [answer["message_id"]], timeout=10)
    assert set(ids) <= counts.keys()


async def test_sigterm_finishes_deliveries_in_flight(
    start_server: ServerFactory, http: aiohttp.ClientSession, start_receiver: ReceiverFactory
) -> None:
    # The grace (2 s) is well beyond the receiver's 0.5 s: everything in flight finishes.
    server = start_server(
        "--workers", "4", "--receiver-concurrency", "4", "--shutdown-grace", "2s", *FAST_RETRIES
    )
    client = SeedClient(http, server.url)
    receiver = await start_receiver(slow(0.5))
    await client.connect_receiver(receiver.url)
    sender = await client.connect_sender()
    ids = await publish_many(client, sender, [f"slow {n}" for n in range(16)])
    await wait_until(lambda: len(receiver.attempts) >= 4, 10, "four deliveries in flight")

    # In a thread: the receiver shares this event loop and must answer meanwhile.
    assert await asyncio.to_thread(server.terminate) == 0, server.log
    await asyncio.to_thread(server.restart)
    counts = await wait_for_ids(receiver, ids, timeout=30)
    assert duplicates(counts) == 0, (
        "deliveries in flight at SIGTERM were delivered again although the shutdown "
        f"grace was long enough to finish them\n{server.log}"
    )


async def test_sigterm_releases_deliveries_it_cannot_finish(
    start_server: ServerFactory, http: aiohttp.ClientSession, start_receiver: ReceiverFactory
) -> None:
    server = start_server(
        "--workers", "4", "--receiver-concurrency", "4", "--shutdown-grace", "0.2s", *FAST_RETRIES
    )
    client = SeedClient(http, server.url)
    receiver = await start_receiver(slow(1.5))
    await client.connect_receiver(receiver.url)
    sender = await client.connect_sender()
    ids = await publish_many(client, sender, [f"very slow {n}" for n in range(8)])
    await wait_until(lambda: len(receiver.attempts) >= 4, 10, "four deliveries in flight")

    assert await asyncio.to_thread(server.terminate) == 0, server.log
    await asyncio.to_thread(server.restart)
    counts = await wait_for_ids(receiver, ids, timeout=30)
    assert counts.keys() == set(ids)
    # One that was in flight may have reached the receiver: it counted as an attempt,
    # so its next try carries the next number, never the same one again.
    tries = [(record.message_id, record.headers["mq-attempt"]) for record in receiver.attempts]
    repeated = sorted(pair for pair in set(tries) if tries.count(pair) > 1)
    assert repeated == [], f"attempt numbers sent twice: {repeated}"


# In a group each process has its own --workers (docs/operations.md).
@pytest.mark.one_process
async def test_workers_bound_deliveries_in_flight(
    start_server: ServerFactory, http: aiohttp.ClientSession, start_receiver: ReceiverFactory
) -> None:
    target = 128
    # The receiver's own bound is above --workers, so only --workers holds it back.
    server = start_server(
        "--workers", str(target), "--receiver-concurrency", str(2 * target), *FAST_RETRIES
    )
    client = SeedClient(http, server.url)
    in_flight = 0
    peak = 0
    crowding = False
    reached = asyncio.Event()

    async def hold_until_crowded(request: web.Request, number: int) -> web.StreamResponse:
        nonlocal in_flight, peak
        if not crowding:
            # Answers in 0.1 s, to a backlog: its window grows past --workers.
            await asyncio.sleep(0.1)
            return web.Response(status=204)
        in_flight += 1
        peak = max(peak, in_flight)
        if peak >= target:
            reached.set()
        try:
            # Bounded: if the broker never reaches the target, answer after 10 s anyway.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reached.wait(), 10)
        finally:
            in_flight -= 1
        return web.Response(status=204)

    receiver = await start_receiver(hold_until_crowded)
    await client.connect_receiver(receiver.url)
    sender = await client.connect_sender()
    warm = await publish_many(client, sender, [f"warm {n}" for n in range(3000)])
    await wait_for_ids(receiver, warm, timeout=40)
    crowding = True
    ids = await publish_many(client, sender, [f"crowd {n}" for n in range(2 * target)])
    await wait_for_ids(receiver, ids, timeout=40)
    assert peak == target, f"at most {peak} deliveries were in flight at once, not {target}"
