"""A subscription's max_per_second through the dispatcher in this process (tests/
support/inprocess.py): with a fake clock each start is checked against the token
bucket exactly."""

from __future__ import annotations

from mqpy.auth.access import ANONYMOUS
from mqpy.model.domain import SubscriptionChanges
from tests.support.inprocess import T0, in_process
from tests.support.pacing import starts_too_early

RATE = 10.0
BURST = 10  # the bucket holds one second's worth
STEP = 0.01


async def test_max_per_second_paces_deliveries_and_clearing_it_lifts_the_pace() -> None:
    async with in_process(workers=16, jobs=32) as run:
        paced = await run.subscribe("paced", max_per_second=RATE)
        unpaced = await run.subscribe("paced")
        bodies = [f"p-{n}" for n in range(30)]
        await run.publish("paced", *bodies)
        await run.advance(5.0, step=STEP)

        assert sorted(run.sender.bodies(paced.id)) == sorted(bodies)
        assert {s.at for s in run.sender.to(unpaced.id)} == {T0}, "the other was paced too"
        times = [s.at for s in run.sender.to(paced.id)]
        assert starts_too_early(times, RATE, BURST, slack=0.0) == []
        # Not slower than the pace either: the last one a step after its token.
        assert times[-1] - times[0] <= (len(bodies) - BURST) / RATE + STEP

        changes = SubscriptionChanges(clear_max_per_second=True)
        await run.broker.update_subscription(paced.id, changes, ANONYMOUS)
        more = [f"q-{n}" for n in range(30)]
        start = run.clock.now
        await run.publish("paced", *more)
        await run.advance(1.0, step=STEP)
        lifted = [s.at for s in run.sender.to(paced.id) if s.body in more]
        assert len(lifted) == 30 and max(lifted) == start, "still paced after clearing it"


async def test_max_per_second_holds_from_the_first_delivery() -> None:
    # Room for 16 at once: the first deliveries must still keep to the burst.
    async with in_process(workers=32, jobs=32, receiver_concurrency=16) as run:
        paced = await run.subscribe("burst", max_per_second=RATE)
        await run.publish("burst", *(f"b-{n}" for n in range(30)))
        await run.advance(5.0, step=STEP)

        times = [s.at for s in run.sender.to(paced.id)]
        assert len(times) == 30
        assert times[:BURST] == [T0] * BURST
        assert starts_too_early(times, RATE, BURST, slack=0.0) == []
