"""Graceful restarts mid-delivery: SIGTERM while publishes arrive and a slow receiver
(`bench.sink`'s `/slow` path, 50 ms a delivery) holds deliveries, then start again.
Checks: the broker exits 0 within its shutdown grace, nothing acknowledged is lost, and
no message is delivered twice beyond the deliveries that were in flight at the signal
(those the broker could not see answered before it stopped)."""

from __future__ import annotations

import asyncio
import statistics
import time

from torture.harness import (
    FAST_RETRIES,
    Arrivals,
    Context,
    Outcome,
    Publishing,
    duplicates,
    missing_after,
    say,
    sink_stats,
)


async def run(ctx: Context) -> Outcome:
    outcome = Outcome("graceful restarts (SIGTERM)")
    trials = 3 if ctx.short else 20
    sink = ctx.sink()
    server = ctx.server("graceful", *FAST_RETRIES)
    api = ctx.api(server)
    await api.connect_receiver(sink.path_url("slow"))
    sender = await api.connect_sender()
    arrivals = Arrivals(ctx.http, sink, "/slow")
    acked: set[str] = set()
    in_flight_total = 0
    stops: list[float] = []
    for trial in range(1, trials + 1):
        publishing = Publishing(
            ctx.http, [server.url], sender, seed_workers=2, batch_workers=1, pace=0.01
        )
        stop = asyncio.Event()
        load = asyncio.create_task(publishing.run(stop))
        await asyncio.sleep(ctx.rng.uniform(0.5, 1.5))
        held = (await sink_stats(ctx.http, sink))["slow_held"]
        started = time.monotonic()
        code = await asyncio.to_thread(server.terminate)
        stops.append(time.monotonic() - started)
        stop.set()
        await load
        # What the receiver held at the signal, and what it took in meanwhile, may have
        # been answered after the broker stopped listening for the answer.
        in_flight = max(held, (await sink_stats(ctx.http, sink))["slow_held"])
        in_flight_total += in_flight
        outcome.check(code == 0, f"trial {trial}: SIGTERM ended the broker with exit code {code}")
        server.restart()
        acked.update(publishing.acked)
        say(
            f"  trial {trial}: SIGTERM with {held} deliveries held by the receiver, exit "
            f"{code} after {stops[-1]:.2f} s; {len(publishing.acked)} acknowledged"
        )
    lost = await missing_after([arrivals], acked)
    extra, _ = await duplicates(ctx.http, sink)
    say(f"  lost {lost}, duplicates {extra} (in flight at the signals: {in_flight_total})")
    outcome.check(lost == 0, f"{lost} acknowledged messages never arrived")
    outcome.check(
        extra <= in_flight_total,
        f"{extra} duplicates, more than the {in_flight_total} deliveries in flight at the signals",
    )
    outcome.figures = {
        "restarts": f"{trials}",
        "acknowledged": f"{len(acked):,}",
        "lost": f"{lost}",
        "duplicates": f"{extra} (in flight {in_flight_total})",
        "stop median/max": f"{statistics.median(stops):.2f} / {max(stops):.2f} s",
    }
    return outcome
