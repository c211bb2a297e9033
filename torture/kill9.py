"""`kill -9` under mixed load: seed `/send`s and batch publishes to two receivers, the
broker killed at a random moment, started again on the same data directory. After each
trial every message acknowledged so far must reach both receivers; duplicates (a
delivery made again because the crash came before its acknowledgement was recorded)
are counted, not failed."""

from __future__ import annotations

import asyncio
import statistics
import time

from tests.support.server import ServerProcess

from torture.harness import (
    FAST_RETRIES,
    Arrivals,
    Context,
    Outcome,
    Publishing,
    duplicates,
    missing_after,
    publish_for,
    say,
)


async def run(ctx: Context) -> Outcome:
    outcome = Outcome("kill -9 under load")
    sink = ctx.sink()
    server = ctx.server("kill9", *FAST_RETRIES)
    api = ctx.api(server)
    for path in ("r0", "r1"):
        await api.connect_receiver(sink.path_url(path))
    sender = await api.connect_sender()
    arrivals = [Arrivals(ctx.http, sink, path) for path in ("/r0", "/r1")]
    acked: set[str] = set()
    restarts: list[float] = []
    readies: list[float] = []
    lost_total = 0
    duplicates_before = 0
    for trial in range(1, ctx.trials + 1):
        publishing = Publishing(ctx.http, [server.url], sender)
        # The kill comes while the publishes are in flight: publishing stops only after.
        load_seconds = ctx.rng.uniform(0.3, 1.2)
        killer = _kill_after(server, load_seconds)
        await publish_for(publishing, load_seconds + 0.05)
        await killer
        started = time.monotonic()
        server.restart()
        restarts.append(time.monotonic() - started)
        outcome.check(await api.wait_ready(30), f"trial {trial}: /readyz not ready in 30 s")
        readies.append(time.monotonic() - started)
        acked.update(publishing.acked)
        lost = await missing_after(arrivals, acked)
        lost_total += lost
        extra, _ = await duplicates(ctx.http, sink)
        say(
            f"  trial {trial}: killed after {load_seconds:.2f} s, {len(publishing.acked)} "
            f"acknowledged ({publishing.answers[0]} cut off), lost {lost}, "
            f"duplicates {extra - duplicates_before}, listening again in "
            f"{restarts[-1]:.2f} s, ready in {readies[-1]:.2f} s"
        )
        duplicates_before = extra
        outcome.check(lost == 0, f"trial {trial}: {lost} acknowledged deliveries never arrived")
    server.kill()
    outcome.figures = {
        "trials": f"{ctx.trials}",
        "acknowledged": f"{len(acked):,}",
        "lost": f"{lost_total}",
        "duplicates": f"{duplicates_before}",
        "restart (listening) median/max": (
            f"{statistics.median(restarts):.2f} / {max(restarts):.2f} s"
        ),
        "ready median/max": f"{statistics.median(readies):.2f} / {max(readies):.2f} s",
    }
    return outcome


def _kill_after(server: ServerProcess, seconds: float) -> asyncio.Task[None]:
    async def kill() -> None:
        await asyncio.sleep(seconds)
        server.kill()

    return asyncio.create_task(kill())
