"""Ordering keys, pause and resume, through the broker and the dispatcher in this
process (tests/support/inprocess.py): one key's messages go one at a time in publish
order, a failing head holds up only its own key, and a paused subscription gets
nothing until resumed."""

from __future__ import annotations

from mqpy.auth.access import ANONYMOUS
from mqpy.delivery.retry import RedeliveryPolicy
from mqpy.delivery.sender import Outcome
from mqpy.model.domain import ClaimedDelivery, DeliveryState
from tests.support.inprocess import QUICK, in_process, status

STEP = 0.05


def of_key(bodies: list[str], key: str) -> list[str]:
    return [body for body in bodies if body.startswith(f"{key}-")]


async def test_a_failing_head_blocks_only_its_key() -> None:
    async def fail_a0_twice(delivery: ClaimedDelivery) -> Outcome:
        code = 422 if delivery.body == "A-0" and delivery.attempt <= 2 else 204
        return await status(code)(delivery)

    async with in_process(policy=RedeliveryPolicy(base=1.0, max_delay=2.0)) as run:
        sub = await run.subscribe("ordered", answer=fail_a0_twice)
        order = [f"{key}-{n}" for n in range(5) for key in "AB"]  # A-0, B-0, A-1, ...
        for body in order:
            await run.publish("ordered", body, ordering_key=body[0])
        await run.run_until(
            lambda: len(run.sender.to(sub.id)) == 12, step=STEP, limit=10, what="all sent"
        )

        sent = run.sender.to(sub.id)
        bodies = [s.body for s in sent]
        assert of_key(bodies, "A") == ["A-0", "A-0", "A-0", *(f"A-{n}" for n in range(1, 5))]
        assert of_key(bodies, "B") == [f"B-{n}" for n in range(5)]
        head = [s for s in sent if s.body == "A-0"]
        assert [s.delivery.attempt for s in head] == [1, 2, 3]
        late_b = [s.body for s in sent if s.body.startswith("B") and s.at >= head[-1].at]
        assert late_b == [], f"key B waited for key A's failing head: {late_b}"


async def test_a_key_has_one_delivery_in_flight_at_a_time() -> None:
    async with in_process() as run:
        sub = await run.subscribe("serial")
        run.sender.hold()
        keyed = [f"K-{n}" for n in range(5)]
        loose = [f"U-{n}" for n in range(5)]
        for key_text, loose_text in zip(keyed, loose, strict=True):
            await run.publish("serial", key_text, ordering_key="K")
            await run.publish("serial", loose_text)
        await run.rounds([QUICK] * 8)

        bodies = run.sender.bodies(sub.id)
        assert of_key(bodies, "K") == keyed
        assert sorted(bodies) == sorted(keyed + loose)
        assert run.sender.most_per_key["K"] == 1, "two messages of key K were out at once"
        # It could take several at once: the key, not a lack of room, held K back.
        assert run.sender.most_in_flight[sub.id] >= 3


async def test_a_group_keeps_a_key_in_order_across_members() -> None:
    async with in_process() as run:
        members = [await run.subscribe("ledger", group="bookkeepers") for _ in range(3)]
        run.sender.hold()
        keyed = [f"G-{n}" for n in range(15)]
        for body in keyed:
            await run.publish("ledger", body, ordering_key="G")
        await run.publish("ledger", *(f"L-{n}" for n in range(30)))
        await run.rounds([QUICK] * 20)

        bodies = [s.body for s in run.sender.sent]
        assert of_key(bodies, "G") == keyed
        assert len(bodies) == len(keyed) + 30
        assert run.sender.most_per_key["G"] == 1, "two of key G were out at once"
        assert len({m.id for m in members} & set(run.sender.most_in_flight)) >= 2, (
            "the group's deliveries went to one member only"
        )


async def test_a_dead_lettered_head_releases_its_key() -> None:
    async def refuse_a0(delivery: ClaimedDelivery) -> Outcome:
        return await status(422 if delivery.body == "A-0" else 204)(delivery)

    async with in_process(policy=RedeliveryPolicy(base=0.05, max_delay=0.1, max_attempts=2)) as run:
        sub = await run.subscribe("ordered", answer=refuse_a0)
        for n in range(3):
            await run.publish("ordered", f"A-{n}", ordering_key="A")
        await run.advance(2.0, step=STEP)

        assert run.sender.bodies(sub.id) == ["A-0", "A-0", "A-1", "A-2"]
        (letter,) = await run.dead_letters(sub.id)
        assert (letter.body, letter.attempts) == ("A-0", 2)


async def test_pause_keeps_messages_and_resume_delivers_them_in_key_order() -> None:
    async with in_process() as run:
        sub = await run.subscribe("held")
        await run.broker.set_paused(sub.id, True, ANONYMOUS)
        order = [f"k-{n}" for n in range(6)]
        ids = [(await run.publish("held", body, ordering_key="K"))[0] for body in order]
        await run.advance(60, step=1.0)

        assert run.sender.sent == [], "a paused subscription was sent deliveries"
        for message_id in ids:
            (delivery,) = (await run.message(message_id)).deliveries
            assert (delivery.state, delivery.attempts) == (DeliveryState.PENDING, 0)

        await run.broker.set_paused(sub.id, False, ANONYMOUS)
        await run.advance(1.0, step=0.1)
        assert run.sender.bodies(sub.id) == order


async def test_deleting_a_subscription_drops_its_pending_deliveries() -> None:
    async with in_process() as run:
        doomed = await run.subscribe("dropped", paused=True)
        staying = await run.subscribe("dropped")
        ids = await run.publish("dropped", *(f"d-{n}" for n in range(5)))
        await run.advance(1.0, step=0.1)
        assert len(run.sender.to(staying.id)) == 5

        await run.broker.delete_subscription(doomed.id, ANONYMOUS)
        for message_id in ids:
            (delivery,) = (await run.message(message_id)).deliveries
            assert (delivery.subscription_id, delivery.state) == (
                staying.id,
                DeliveryState.DELIVERED,
            )
        await run.advance(10, step=1.0)
        assert run.sender.to(doomed.id) == []
