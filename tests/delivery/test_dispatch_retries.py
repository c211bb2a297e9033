"""Retries, backoff, dead letters and max-age, through the broker and the dispatcher in
this process (tests/support/inprocess.py): the fake clock lets each wait be checked
against its ceiling exactly, where a real server could only be timed loosely."""

from __future__ import annotations

import itertools

from mqpy.delivery.retry import RedeliveryPolicy
from mqpy.delivery.sender import Outcome
from mqpy.model.domain import ClaimedDelivery, DeliveryState, RetryOverrides
from tests.support.inprocess import T0, Answer, Sent, in_process, status

STEP = 0.01  # fake seconds per step: the slack on every measured wait


def gaps(sent: list[Sent]) -> list[float]:
    return [b.at - a.at for a, b in itertools.pairwise(sent)]


def attempts(sent: list[Sent]) -> list[int]:
    return [s.delivery.attempt for s in sent]


def failing_first(failures: int, code: int = 422) -> Answer:
    """`code` to a delivery's first `failures` attempts, then a 204."""

    async def answer(delivery: ClaimedDelivery) -> Outcome:
        return await status(code if delivery.attempt <= failures else 204)(delivery)

    return answer


async def test_each_retry_waits_at_most_its_exponential_ceiling_then_dead_letters() -> None:
    policy = RedeliveryPolicy(base=1.0, max_delay=4.0, max_attempts=5)
    async with in_process(policy=policy) as run:
        # 422: this message's fault, so the receiver as a whole is never paused.
        sub = await run.subscribe("orders", answer=status(422))
        (message_id,) = await run.publish("orders", "doomed")
        await run.run_until(
            lambda: len(run.sender.sent) == 5, step=STEP, limit=60, what="five attempts"
        )
        await run.advance(60, step=1.0)

        sent = run.sender.to(sub.id)
        assert attempts(sent) == [1, 2, 3, 4, 5], "attempted again past max_attempts"
        assert sent[0].at == T0
        ceilings = [1.0, 2.0, 4.0, 4.0]  # base * 2**(n-1), up to max_delay
        for n, (gap, ceiling) in enumerate(zip(gaps(sent), ceilings, strict=True), start=1):
            assert 0.0 <= gap <= ceiling + STEP, f"wait after attempt {n}: {gap:.3f} s"
        (letter,) = await run.dead_letters(sub.id)
        assert (letter.message_id, letter.attempts, letter.last_status) == (message_id, 5, 422)
        assert letter.dead_at == sent[-1].at
        (delivery,) = (await run.message(message_id)).deliveries
        assert delivery.state is DeliveryState.DEAD
        assert [a.attempt for a in delivery.history] == [1, 2, 3, 4, 5]


async def test_a_subscriptions_backoff_bounds_override_the_brokers() -> None:
    # The broker's own waits are up to 5, 10 and 20 s: three within 0.1 s by chance
    # is about one run in 40,000.
    policy = RedeliveryPolicy(base=5.0, max_delay=60.0)
    overrides = {
        "both": (RetryOverrides(min_backoff_seconds=0.05, max_backoff_seconds=0.1), 0.1),
        "max only": (RetryOverrides(max_backoff_seconds=0.1), 0.1),
        "min only": (RetryOverrides(min_backoff_seconds=0.05), 0.2),  # 0.05, 0.1, 0.2
    }
    async with in_process(policy=policy) as run:
        subs = {
            name: await run.subscribe("backoff", answer=failing_first(3), retry=retry)
            for name, (retry, _) in overrides.items()
        }
        await run.publish("backoff", "try again soon")
        await run.advance(1.0, step=STEP)

        for name, sub in subs.items():
            sent = run.sender.to(sub.id)
            assert attempts(sent) == [1, 2, 3, 4], name
            ceiling = overrides[name][1]
            assert max(gaps(sent)) <= ceiling + STEP, (name, gaps(sent))


async def test_max_backoff_also_bounds_the_wait_after_a_5xx() -> None:
    # A 503 also shrinks the receiver's window; four in a row do not pause it.
    async with in_process(policy=RedeliveryPolicy(base=5.0, max_delay=60.0)) as run:
        retry = RetryOverrides(min_backoff_seconds=0.05, max_backoff_seconds=0.1)
        sub = await run.subscribe("backoff5xx", answer=failing_first(4, 503), retry=retry)
        await run.publish("backoff5xx", "try again soon")
        await run.advance(1.0, step=STEP)

        sent = run.sender.to(sub.id)
        assert attempts(sent) == [1, 2, 3, 4, 5]
        assert max(gaps(sent)) <= 0.1 + STEP, gaps(sent)


async def test_max_attempts_dead_letters_after_the_subscriptions_own_budget() -> None:
    async with in_process(
        policy=RedeliveryPolicy(base=0.05, max_delay=0.1, max_attempts=10)
    ) as run:
        short = await run.subscribe(
            "budget", answer=status(500), retry=RetryOverrides(max_attempts=2)
        )
        default = await run.subscribe("budget", answer=status(500))
        (message_id,) = await run.publish("budget", "doomed")
        await run.run_until(
            lambda: len(run.sender.to(default.id)) == 10, step=0.05, limit=120, what="10 tries"
        )
        await run.advance(10, step=0.5)

        assert attempts(run.sender.to(short.id)) == [1, 2]
        assert attempts(run.sender.to(default.id)) == list(range(1, 11))
        (early,) = await run.dead_letters(short.id)
        (late,) = await run.dead_letters(default.id)
        assert (early.message_id, early.attempts, early.last_status) == (message_id, 2, 500)
        assert (late.message_id, late.attempts, late.last_status) == (message_id, 10, 500)
        assert early.dead_at < late.dead_at


async def test_max_age_dead_letters_a_delivery_whose_next_try_would_be_too_late() -> None:
    policy = RedeliveryPolicy(base=1.0, max_delay=2.0, max_attempts=1000, max_age=10.0)
    async with in_process(policy=policy) as run:
        sub = await run.subscribe("aging", answer=status(422))
        (message_id,) = await run.publish("aging", "too old")
        await run.run_until(
            lambda: (
                bool(run.store.state.deliveries)
                and all(d.state == "dead" for d in run.store.state.deliveries.values())
            ),
            step=STEP,
            limit=30,
            what="dead-lettered",
        )

        (letter,) = await run.dead_letters(sub.id)
        sent = run.sender.to(sub.id)
        assert letter.message_id == message_id
        assert letter.attempts == len(sent) > 1
        # The last try came within max-age, and the next (at most 2 s on) would not have.
        assert 10.0 - 2.0 <= letter.dead_at - T0 <= 10.0, letter.dead_at - T0


async def test_a_retry_after_answer_holds_the_next_attempt_that_long() -> None:
    async def busy_once(delivery: ClaimedDelivery) -> Outcome:
        if delivery.attempt == 1:
            return await status(503, retry_after=3.0)(delivery)
        return await status(204)(delivery)

    async with in_process(policy=RedeliveryPolicy(base=0.05, max_delay=0.1)) as run:
        sub = await run.subscribe("later", answer=busy_once)
        (message_id,) = await run.publish("later", "after three seconds")
        (waiting,) = (await run.message(message_id)).deliveries
        assert waiting.next_attempt_at == T0 + 3.0, "the retry is not scheduled as asked"
        await run.advance(5.0, step=STEP)

        first, second = run.sender.to(sub.id)
        assert 3.0 <= second.at - first.at <= 3.0 + STEP, second.at - first.at
