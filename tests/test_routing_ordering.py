"""Ordering keys end to end: a subscription (or a group) gets one key's messages in
publish order, one at a time; a message that keeps failing blocks only its own key."""

from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp
from aiohttp import web

from tests.conftest import ReceiverFactory, ServerFactory
from tests.support.load import FAST_RETRIES, wait_until
from tests.support.receiver import Received
from tests.support.routing import SETTLE_SECONDS, Broker, texts, wait_for_texts

ROOMY = ("--workers", "8", "--jobs", "32", "--receiver-concurrency", "8")


def of_key(records: list[Received], key: str) -> list[str]:
    return [str(record.text) for record in records if record.body.get("ordering_key") == key]


class InFlight:
    """A receiver behaviour taking `latency` seconds per delivery that records the
    most deliveries it held at once, per ordering key and in all."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.now: Counter[str | None] = Counter()
        self.most: Counter[str | None] = Counter()
        self.most_in_all = 0

    async def __call__(self, request: web.Request, number: int) -> web.StreamResponse:
        key = (await request.json()).get("ordering_key")
        self.now[key] += 1
        self.most[key] = max(self.most[key], self.now[key])
        self.most_in_all = max(self.most_in_all, self.now.total())
        try:
            await asyncio.sleep(self.latency)
        finally:
            self.now[key] -= 1
        return web.Response(status=204)


async def test_a_failing_head_blocks_only_its_key(
    start_server: ServerFactory, http: aiohttp.ClientSession, start_receiver: ReceiverFactory
) -> None:
    # Retries after up to 1 s, then 2 s (full jitter): key B has ample time to finish
    # while A's head waits, and a broker that holds B behind A cannot hide.
    broker = Broker(http, start_server("--retry-base", "1", "--retry-max", "2", *ROOMY).url)
    failures = 0

    async def fail_a0_twice(request: web.Request, number: int) -> web.StreamResponse:
        nonlocal failures
        if (await request.json())["body"] == "A-0" and failures < 2:
            failures += 1
            return web.Response(status=422)  # this message's fault, not the receiver's
        return web.Response(status=204)

    receiver = await start_receiver(fail_a0_twice)
    await broker.connect_receiver(receiver.url, topic="ordered")
    order = [f"{key}-{n}" for n in range(5) for key in "AB"]  # A-0, B-0, A-1, B-1, ...
    for text in order:
        await broker.publish_new("ordered", text, ordering_key=text[0])

    await wait_for_texts(receiver, order, timeout=20)
    await asyncio.sleep(SETTLE_SECONDS)
    a_order, b_order = [f"A-{n}" for n in range(5)], [f"B-{n}" for n in range(5)]
    assert of_key(receiver.received, "A") == a_order
    assert of_key(receiver.received, "B") == b_order
    assert of_key(receiver.attempts, "A") == ["A-0", "A-0", *a_order], (
        "a later message of key A was attempted before its head succeeded"
    )
    head = [record for record in receiver.attempts if record.text == "A-0"]
    assert [record.headers["mq-attempt"] for record in head] == ["1", "2", "3"]
    head_succeeded = head[-1].at
    late_b = [r.text for r in receiver.received if r.text in b_order and r.at > head_succeeded]
    assert late_b == [], f"key B waited for key A's failing head: {late_b} came after it"
    for record in receiver.received:
        assert record.body == {"body": record.text, "ordering_key": str(record.text)[0]}


async def test_a_key_has_one_delivery_in_flight_at_a_time(
    start_server: ServerFactory, http: aiohttp.ClientSession, start_receiver: ReceiverFactory
) -> None:
    broker = Broker(http, start_server(*ROOMY, *FAST_RETRIES).url)
    behaviour = InFlight(latency=0.15)
    receiver = await start_receiver(behaviour)
    await broker.connect_receiver(receiver.url, topic="serial")
    sender = await broker.connect_sender(topic="serial")
    keyed = [f"K-{n}" for n in range(5)]
    loose = [f"U-{n}" for n in range(5)]
    for key_text, loose_text in zip(keyed, loose, strict=True):
        await broker.send(sender, key_text, ordering_key="K")
        await broker.send(sender, loose_text)

    await wait_for_texts(receiver, keyed + loose, timeout=15)
    assert of_key(receiver.received, "K") == keyed
    assert behaviour.most["K"] == 1, f"{behaviour.most['K']} messages of key K were in flight"
    # The receiver could take several at once: the key, not a lack of room, held K back.
    assert behaviour.most_in_all >= 3, f"at most {behaviour.most_in_all} in flight"
    assert {str(r.text) for r in receiver.received} == set(keyed + loose)
    for record in receiver.received:
        if str(record.text).startswith("U"):
            assert "ordering_key" not in record.body, record.body


async def test_a_group_keeps_a_key_in_order_across_members(
    start_server: ServerFactory, http: aiohttp.ClientSession, start_receiver: ReceiverFactory
) -> None:
    broker = Broker(http, start_server(*ROOMY, *FAST_RETRIES).url)
    behaviour = InFlight(latency=0.03)  # shared: counts across the whole group
    members = [await start_receiver(behaviour) for _ in range(3)]
    for member in members:
        await broker.connect_receiver(member.url, topic="ledger", group="bookkeepers")
    keyed = [f"G-{n}" for n in range(15)]
    for text in keyed:
        await broker.publish_new("ledger", text, ordering_key="G")
    loose = await broker.publish_texts("ledger", [f"L-{n}" for n in range(30)])
    assert len(loose) == 30

    def everything() -> list[Received]:
        return sorted((r for m in members for r in m.received), key=lambda r: r.at)

    await wait_until(
        lambda: len(everything()) >= len(keyed) + 30, 20, "every message across the group"
    )
    await asyncio.sleep(SETTLE_SECONDS)
    assert of_key(everything(), "G") == keyed
    assert len(everything()) == len(keyed) + 30, texts(everything())
    assert behaviour.most["G"] == 1, f"{behaviour.most['G']} of key G were in flight at once"
    assert behaviour.most_in_all >= 2, "the group never had two deliveries in flight"


async def test_a_dead_lettered_head_releases_its_key(
    start_server: ServerFactory, http: aiohttp.ClientSession, start_receiver: ReceiverFactory
) -> None:
    broker = Broker(http, start_server("--max-attempts", "2", *ROOMY, *FAST_RETRIES).url)

    async def refuse_a0(request: web.Request, number: int) -> web.StreamResponse:
        return web.Response(status=422 if (await request.json())["body"] == "A-0" else 204)

    receiver = await start_receiver(refuse_a0)
    await broker.connect_receiver(receiver.url, topic="ordered")
    for n in range(3):
        await broker.publish_new("ordered", f"A-{n}", ordering_key="A")
    await wait_for_texts(receiver, ["A-1", "A-2"])
    assert of_key(receiver.attempts, "A") == ["A-0", "A-0", "A-1", "A-2"]
    letters = (await broker.ok("GET", "/v1/dead-letters"))["dead_letters"]
    assert [letter["body"] for letter in letters] == ["A-0"]
