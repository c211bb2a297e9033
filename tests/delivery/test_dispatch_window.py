"""The adaptive window through the dispatcher in this process (tests/support/
inprocess.py): how many deliveries a receiver holds at once follows its answers. The
window's own arithmetic is tested in test_window.py; these check that the dispatcher
claims and sends by it."""

from __future__ import annotations

from mqpy.delivery.retry import RedeliveryPolicy
from mqpy.delivery.window import INITIAL_WINDOW
from tests.support.inprocess import QUICK, in_process, status

CAP = 32


async def test_a_quick_receiver_doubles_its_window_each_round_up_to_the_cap() -> None:
    async with in_process(workers=64, jobs=64, receiver_concurrency=CAP) as run:
        await run.subscribe("fast")
        run.sender.hold()
        await run.publish("fast", *(f"m-{n}" for n in range(300)))
        held = await run.rounds([QUICK] * 6)

        assert held == [INITIAL_WINDOW, 8, 16, CAP, CAP, CAP]


async def test_slow_answers_shrink_the_window_and_quick_ones_grow_it_back_slowly() -> None:
    async with in_process(workers=64, jobs=64, receiver_concurrency=CAP) as run:
        await run.subscribe("slowing")
        run.sender.hold()
        await run.publish("slowing", *(f"m-{n}" for n in range(600)))
        held = await run.rounds([QUICK] * 4 + [0.5] * 3 + [QUICK] * 3)

        grown, slow, recovering = held[:4], held[4:7], held[7:]
        assert grown[-1] == CAP
        # Each slow round trip leaves 70% of the window (DECREASE), once per round.
        assert slow == [CAP, 22, 15], slow
        # Past the first trouble, one more per window's worth of quick answers.
        assert recovering == [10, 11, 12], recovering


async def test_a_receiver_that_fails_everything_is_probed_one_at_a_time() -> None:
    async with in_process(
        policy=RedeliveryPolicy(base=0.05, max_delay=0.1),
        workers=64,
        jobs=64,
        receiver_concurrency=CAP,
    ) as run:
        sub = await run.subscribe("down", answer=status(500))
        healthy = await run.subscribe("up")
        run.sender.hold()
        await run.publish("down", *(f"m-{n}" for n in range(100)))
        held = await run.rounds([0.2] * 20)

        assert held[:4] == [INITIAL_WINDOW, 2, 1, 1], held
        # Paused after failing with its window down to one, then probed: one at a time.
        assert max(held[4:]) == 1 and 0 in held[4:], held
        assert run.sender.most_in_flight[sub.id] == INITIAL_WINDOW
        # Another receiver of other messages is not held back.
        await run.publish("up", *(f"h-{n}" for n in range(20)))
        assert len(run.sender.to(healthy.id)) == 20


async def test_max_concurrency_caps_what_a_subscription_holds_whatever_its_window() -> None:
    async with in_process(workers=64, jobs=64, receiver_concurrency=CAP) as run:
        capped = await run.subscribe("wide", max_concurrency=2)
        wide = await run.subscribe("wide", max_concurrency=40)  # above the broker's CAP
        run.sender.hold()
        await run.publish("wide", *(f"m-{n}" for n in range(200)))
        await run.rounds([QUICK] * 8)

        assert run.sender.most_in_flight[capped.id] == 2
        assert run.sender.most_in_flight[wide.id] == 40
