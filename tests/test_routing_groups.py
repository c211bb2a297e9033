"""Consumer groups end to end: members of a group share a topic's messages (each goes
to one member), a member killed in the middle loses nothing (its unacknowledged work
goes to the others, and only that work is delivered twice), ungrouped receivers and
each group get every message, and a group's members must share its filter."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.conftest import ReceiverFactory, ServerFactory
from tests.support.load import FAST_RETRIES, duplicates, received_ids, wait_until
from tests.support.receiver import Receiver
from tests.support.routing import SETTLE_SECONDS, Broker, KillableMember, counts, wait_for_texts

MESSAGES = 3000
# Deliveries one receiver may hold at once: the most a killed member can have had in
# flight, so the most messages its death can make the group see twice.
RECEIVER_CONCURRENCY = 4


@contextlib.asynccontextmanager
async def members(behaviours: list[KillableMember]) -> AsyncIterator[list[Receiver]]:
    receivers = [Receiver(behaviour) for behaviour in behaviours]
    try:
        yield [await receiver.start() for receiver in receivers]
    finally:
        for receiver in receivers:
            await receiver.stop()


# In a group of processes each applies --receiver-concurrency on its own: a member may
# hold N times as many (docs/operations.md, "In a group ... each process's own").
@pytest.mark.one_process
async def test_a_group_shares_messages_and_survives_a_killed_member(
    start_server: ServerFactory, http: aiohttp.ClientSession, start_receiver: ReceiverFactory
) -> None:
    server = start_server(
        "--workers",
        "16",
        "--jobs",
        "64",
        "--receiver-concurrency",
        str(RECEIVER_CONCURRENCY),
        *FAST_RETRIES,
    )
    broker = Broker(http, server.url)
    behaviours = [KillableMember(latency=0.002) for _ in range(3)]
    async with members(behaviours) as group:
        for member in group:
            await broker.connect_receiver(member.url, topic="jobs", group="workers")
        everyone = await start_receiver()
        await broker.connect_receiver(everyone.url, topic="jobs")

        texts = [f"job {n}" for n in range(MESSAGES)]
        publishing = asyncio.create_task(broker.publish_texts("jobs", texts, size=100))

        def processed() -> int:
            return sum(len(behaviour.processed) for behaviour in behaviours)

        victim, survivors = behaviours[0], behaviours[1:]
        # Kill it halfway, in the middle of a delivery (it holds one most of the time).
        await wait_until(
            lambda: processed() >= MESSAGES // 2 and victim.in_flight > 0, 30, "half the jobs"
        )
        before_kill = [len(behaviour.processed) for behaviour in behaviours]
        await victim.kill(group[0])
        killed_at = time.monotonic()
        ids = await publishing
        assert len(set(ids)) == MESSAGES

        def across_group() -> Counter[str]:
            # What the killed member processed counts: its work was done, only some
            # of its acknowledgements were lost.
            seen = Counter(victim.processed)
            for member in group[1:]:
                seen.update(received_ids(member))
            return seen

        await wait_until(
            lambda: (
                set(ids) <= across_group().keys()
                and victim.in_flight_at_kill <= set().union(*(received_ids(m) for m in group[1:]))
            ),
            40,
            "every job across the group",
        )
        await wait_until(
            lambda: set(ids) <= received_ids(everyone).keys(), 30, "every job ungrouped"
        )
        await asyncio.sleep(SETTLE_SECONDS)

    seen = across_group()
    twice = {message_id for message_id, count in seen.items() if count > 1}
    elapsed = time.monotonic() - killed_at
    print(
        f"before the kill: {before_kill} processed per member; in flight to the killed "
        f"member at the kill: {len(victim.in_flight_at_kill)}; duplicates across the "
        f"group: {duplicates(seen)} ({len(twice)} messages); after the kill the killed "
        f"member was tried {len(group[0].attempts) - len(victim.processed)} more times; "
        f"survivors processed {[len(s.processed) for s in survivors]}; "
        f"recovery took {elapsed:.1f} s"
    )
    assert seen.keys() == set(ids), "the group got messages that were never published"
    assert victim.in_flight_at_kill, "nothing was in flight at the kill; nothing was tested"
    assert twice <= victim.in_flight_at_kill, (
        f"{len(twice - victim.in_flight_at_kill)} messages were delivered twice although "
        f"they were not in flight to the killed member at the kill"
    )
    assert duplicates(seen) == len(twice), "a message was delivered more than twice"
    assert len(victim.in_flight_at_kill) <= RECEIVER_CONCURRENCY, (
        f"{len(victim.in_flight_at_kill)} deliveries were in flight to one member, "
        f"more than --receiver-concurrency {RECEIVER_CONCURRENCY}"
    )
    for count in before_kill:
        assert count >= sum(before_kill) // 10, f"the group was not shared: {before_kill}"

    assert await broker.ok("GET", "/v1/dead-letters") == {
        "dead_letters": [],
        "next_cursor": None,
    }
    ungrouped = received_ids(everyone)
    assert ungrouped.keys() == set(ids)
    assert duplicates(ungrouped) == 0, "a healthy ungrouped receiver saw redeliveries"


async def _wait_for_group(team: list[Receiver], expected: list[str]) -> None:
    def across() -> set[str]:
        return {text for member in team for text in counts(member.received)}

    await wait_until(lambda: set(expected) <= across(), 20, "every message across the group")


async def test_each_group_and_each_ungrouped_receiver_gets_every_message(
    start_server: ServerFactory, http: aiohttp.ClientSession, start_receiver: ReceiverFactory
) -> None:
    broker = Broker(http, start_server("--workers", "8", *FAST_RETRIES).url)
    blue = [await start_receiver() for _ in range(2)]
    green = [await start_receiver() for _ in range(2)]
    alone = await start_receiver()
    for member in blue:
        await broker.connect_receiver(member.url, topic="tasks", group="blue")
    for member in green:
        await broker.connect_receiver(member.url, topic="tasks", group="green")
    await broker.connect_receiver(alone.url, topic="tasks")
    # A group is named per topic: "blue" on another topic shares nothing with this one.
    elsewhere = await start_receiver()
    await broker.connect_receiver(elsewhere.url, topic="chores", group="blue")

    texts = [f"task {n}" for n in range(200)]
    await broker.publish_texts("tasks", texts)
    for team in (blue, green):
        await _wait_for_group(team, texts)
    await wait_for_texts(alone, texts)
    await asyncio.sleep(SETTLE_SECONDS)
    for name, team in (("blue", blue), ("green", green)):
        got = Counter[str]()
        for member in team:
            got.update(counts(member.received))
        assert got == {text: 1 for text in texts}, f"group {name}: {duplicates(got)} duplicates"
        assert all(member.received for member in team), f"group {name} used one member only"
    assert counts(alone.received) == {text: 1 for text in texts}
    assert elsewhere.attempts == []


async def test_group_members_must_share_the_filter(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    broker = Broker(http, start_server().url)
    first = "http://127.0.0.1:9/a"
    await broker.connect_receiver(first, topic="pay", group="g", filter={"region": "eu"})
    body = {
        "ClientURL": "http://127.0.0.1:9/b",
        "mode": "receive",
        "topic": "pay",
        "group": "g",
        "filter": {"region": "us"},
    }
    (await broker.call("POST", "/connect", body)).problem(409)
    native = {"url": "http://127.0.0.1:9/c", "topic": "pay", "group": "g"}
    (await broker.call("POST", "/v1/subscriptions", native)).problem(409)
    # The same filter joins the group.
    body["filter"] = {"region": "eu"}
    await broker.ok("POST", "/connect", body)


async def test_bad_group_names_are_400(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    broker = Broker(http, start_server().url)
    for group in ["", "a b", "x" * 101, "ü", 5]:
        body = {"ClientURL": "http://127.0.0.1:9/a", "mode": "receive", "group": group}
        (await broker.call("POST", "/connect", body)).problem(400, "group")
    send = {"ClientURL": "", "mode": "send", "group": "g"}
    (await broker.call("POST", "/connect", send)).problem(400, "group")


async def test_seed_and_native_members_form_one_group_and_a_paused_one_gets_nothing(
    start_server: ServerFactory, http: aiohttp.ClientSession, start_receiver: ReceiverFactory
) -> None:
    broker = Broker(http, start_server("--workers", "8", *FAST_RETRIES).url)
    seed, native, paused = [await start_receiver() for _ in range(3)]
    await broker.connect_receiver(seed.url, topic="mixed.>", group="crew")
    await broker.subscribe(native.url, "mixed.>", group="crew")
    resting = await broker.subscribe(paused.url, "mixed.>", group="crew")
    await broker.ok("POST", f"/v1/subscriptions/{resting['id']}/pause")

    texts = [f"chore {n}" for n in range(100)]
    await broker.publish_texts("mixed.a", texts[:50])
    await broker.publish_texts("mixed.b.c", texts[50:])
    await _wait_for_group([seed, native], texts)
    await asyncio.sleep(SETTLE_SECONDS)
    got = counts(seed.received) + counts(native.received)
    assert got == {text: 1 for text in texts}, f"{duplicates(got)} duplicates"
    assert seed.received and native.received, "the group used one member only"
    assert paused.attempts == [], "a paused member was delivered to"
