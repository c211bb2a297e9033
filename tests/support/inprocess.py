"""The broker and the dispatcher in this process, on the in-memory store, with a fake
clock and a sender that records what it is asked to send.

For the logic a subprocess adds nothing to: retry schedules, dead letters, max-age,
ordering keys, pause and resume, the adaptive window, pacing. Everything is real except
time and the network edge: the store is `MemoryStore`, the broker and dispatcher are
the server's own, composed as `server.py` composes them; `RecordingSender` stands in
for `Sender` behind the dispatcher's `DeliverySender` seam. Time moves only when a test
advances the clock, so schedules are checked exactly and nothing sleeps.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from mqpy.auth.access import ANONYMOUS
from mqpy.core.broker import Broker
from mqpy.delivery.dispatcher import Dispatcher
from mqpy.delivery.retry import RedeliveryPolicy
from mqpy.delivery.sender import Outcome
from mqpy.model.domain import (
    ClaimedDelivery,
    DeadLetter,
    Publication,
    RetryOverrides,
    StoredMessage,
    Subscription,
    SubscriptionSpec,
)
from mqpy.observability import Observer
from mqpy.store.memory import MemoryStore

T0 = 1_700_000_000.0
# Event-loop turns that let a claim reach the sender and its outcome the store: every
# store call of MemoryStore finishes without waiting, so a few dozen always do.
TURNS = 100

DEFAULT_POLICY = RedeliveryPolicy()  # the broker's defaults
QUICK = 0.001  # fake seconds a quick receiver takes to answer

Answer = Callable[[ClaimedDelivery], Awaitable[Outcome]]


class FakeClock:
    """Unix seconds that move only when told."""

    def __init__(self, start: float = T0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def status(code: int, *, retry_after: float | None = None) -> Answer:
    """An answer of this HTTP status to every delivery, as `Sender` reports it."""

    async def answer(delivery: ClaimedDelivery) -> Outcome:
        if 200 <= code < 300:
            return Outcome(ok=True, status=code)
        error = f"receiver answered HTTP {code}"
        return Outcome(ok=False, status=code, error=error, retry_after=retry_after)

    return answer


ACK = status(204)


@dataclass(frozen=True, slots=True)
class Sent:
    at: float  # the fake clock when it was sent
    delivery: ClaimedDelivery

    @property
    def body(self) -> str:
        return self.delivery.body


@dataclass
class RecordingSender:
    """The dispatcher's `DeliverySender`, faked: it records every delivery it is asked
    to send and answers as each subscription's `answers` say (a 204 by default). While
    `held`, sends wait until `release()`: deliveries stay in flight, to be counted."""

    clock: FakeClock
    answers: dict[int, Answer] = field(default_factory=dict)
    sent: list[Sent] = field(default_factory=list)
    in_flight: Counter[int] = field(default_factory=Counter)  # per subscription
    most_in_flight: Counter[int] = field(default_factory=Counter)
    most_per_key: Counter[str] = field(default_factory=Counter)
    held: bool = False
    _keys: Counter[str] = field(default_factory=Counter)
    _waiting: list[asyncio.Event] = field(default_factory=list)  # held sends, in order

    async def send(self, delivery: ClaimedDelivery) -> Outcome:
        self.sent.append(Sent(self.clock(), delivery))
        sid, key = delivery.subscription_id, delivery.ordering_key
        self.in_flight[sid] += 1
        self.most_in_flight[sid] = max(self.most_in_flight[sid], self.in_flight[sid])
        if key is not None:
            self._keys[key] += 1
            self.most_per_key[key] = max(self.most_per_key[key], self._keys[key])
        try:
            if self.held:
                gate = asyncio.Event()
                self._waiting.append(gate)
                await gate.wait()
            return await self.answers.get(sid, ACK)(delivery)
        finally:
            self.in_flight[sid] -= 1
            if key is not None:
                self._keys[key] -= 1

    def hold(self) -> None:
        """Hold every send from now on, until `answer_oldest()` or `release()`."""
        self.held = True

    def answer_oldest(self) -> bool:
        """Let the send held longest answer; False if none is held."""
        if not self._waiting:
            return False
        self._waiting.pop(0).set()
        return True

    def release(self) -> None:
        """Let every held send answer; later sends go through at once."""
        self.held = False
        while self.answer_oldest():
            pass

    def to(self, subscription_id: int) -> list[Sent]:
        return [s for s in self.sent if s.delivery.subscription_id == subscription_id]

    def bodies(self, subscription_id: int) -> list[str]:
        return [s.body for s in self.to(subscription_id)]


class InProcessBroker:
    """A broker and its dispatcher on a MemoryStore, driven by a fake clock."""

    _urls = itertools.count(1)

    def __init__(
        self,
        policy: RedeliveryPolicy,
        *,
        workers: int,
        jobs: int,
        receiver_concurrency: int,
        lease_seconds: float = 30.0,
    ) -> None:
        self.clock = FakeClock()
        self.store = MemoryStore(clock=self.clock)
        self.broker = Broker(self.store, clock=self.clock)
        observer = Observer(self.store, self.broker, CollectorRegistry(), clock=self.clock)
        self.sender = RecordingSender(self.clock)
        self.dispatcher = Dispatcher(
            self.store,
            self.sender,
            policy,
            workers=workers,
            jobs=jobs,
            receiver_concurrency=receiver_concurrency,
            lease_seconds=lease_seconds,
            observer=observer,
            clock=self.clock,
        )

    async def settle(self) -> None:
        """Let the dispatcher do all it can at the current time."""
        for _ in range(TURNS):
            await asyncio.sleep(0)

    async def advance(self, seconds: float, *, step: float | None = None) -> None:
        """Move the clock on by `seconds`, `step` at a time, the dispatcher doing what
        falls due at each step (it is woken as a publish or a timer would wake it)."""
        end = self.clock.now + seconds
        step = step or seconds
        while self.clock.now < end - 1e-9:
            self.clock.now = min(end, self.clock.now + step)
            self.dispatcher.notify()
            await self.settle()

    async def rounds(self, latencies: list[float]) -> list[int]:
        """Deliver in rounds, one per latency: the sender holds what it is given, the
        round counts it, and the latency later lets each answer in turn (the
        dispatcher refilling what the receiver may hold after each, as it does for a
        real receiver). How many were in flight in each round."""
        self.sender.hold()
        held = []
        for latency in latencies:
            await self.settle()
            held.append(self.sender.in_flight.total())
            await self.advance(latency)
            for _ in range(held[-1]):
                self.sender.answer_oldest()
                await self.settle()
        self.sender.release()
        await self.settle()
        return held

    async def run_until(
        self, done: Callable[[], bool], *, step: float, limit: float, what: str
    ) -> None:
        """Advance `step` at a time until `done()`; fail after `limit` fake seconds."""
        end = self.clock.now + limit
        await self.settle()
        while not done():
            if self.clock.now >= end:
                raise AssertionError(f"not {what} within {limit:g} s of fake time")
            await self.advance(step)

    async def subscribe(
        self,
        topic: str,
        *,
        answer: Answer = ACK,
        paused: bool = False,
        retry: RetryOverrides | None = None,
        max_concurrency: int | None = None,
        max_per_second: float | None = None,
        group: str | None = None,
    ) -> Subscription:
        spec = SubscriptionSpec(
            url=f"http://receiver.invalid/{next(self._urls)}",
            topic=topic,
            group=group,
            retry=retry or RetryOverrides(),
            max_concurrency=max_concurrency,
            max_per_second=max_per_second,
        )
        created, _ = await self.broker.create_subscription(spec, ANONYMOUS, paused=paused)
        self.sender.answers[created.id] = answer
        return created

    async def publish(self, topic: str, *bodies: str, ordering_key: str | None = None) -> list[str]:
        """Publish each body as its own message, in order; their ids."""
        ids = []
        for body in bodies:
            publication = Publication(body, ordering_key=ordering_key)
            (published,) = await self.broker.publish(topic, [publication], ANONYMOUS)
            ids.append(published.id)
        await self.settle()
        return ids

    async def message(self, message_id: str) -> StoredMessage:
        return await self.broker.message(message_id, ANONYMOUS)

    async def dead_letters(self, subscription_id: int | None = None) -> list[DeadLetter]:
        page = await self.store.dead_letters(subscription_id=subscription_id, limit=1000)
        return page.items


@asynccontextmanager
async def in_process(
    *,
    policy: RedeliveryPolicy = DEFAULT_POLICY,
    workers: int = 8,
    jobs: int = 32,
    receiver_concurrency: int = 8,
) -> AsyncIterator[InProcessBroker]:
    """An `InProcessBroker`, started, and stopped after the block."""
    running = InProcessBroker(
        policy, workers=workers, jobs=jobs, receiver_concurrency=receiver_concurrency
    )
    await running.store.open()
    await running.broker.start(running.dispatcher)
    await running.dispatcher.start()
    try:
        yield running
    finally:
        running.sender.release()
        await running.dispatcher.stop(grace=0.0)
        await running.store.close()
