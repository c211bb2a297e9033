"""fsync failures, injected: an `LD_PRELOAD` shim, compiled at run time with the
system's C compiler, makes the broker's `fsync` and `fdatasync` fail with EIO while a
flag file exists (elsewhere, with no compiler, this fault is skipped, saying why).

Publishes run throughout; for two seconds every fsync fails. Checks: no publish made
and answered inside that window is acknowledged (its commit never reached the disk);
`/readyz` says not ready meanwhile; afterwards the broker either recovers by itself
(acknowledges publishes again) or stops loudly (exits non-zero) - it never carries on
as if the writes had happened. Then `kill -9` and a start without the shim: every
acknowledged message is delivered, and no refused one is."""

from __future__ import annotations

import asyncio
import time

from tests.support.fsync_shim import FsyncFailures, build_shim

from torture.harness import (
    FAST_RETRIES,
    Arrivals,
    Context,
    Outcome,
    Publishing,
    missing_after,
    publish_for,
    say,
)

FAILING_SECONDS = 2.0


async def run(ctx: Context) -> Outcome:
    outcome = Outcome("fsync failures (EIO)")
    shim = build_shim(ctx.workdir)
    if isinstance(shim, str):
        outcome.skipped = shim
        return outcome
    fsyncs = FsyncFailures(shim, ctx.workdir)
    sink = ctx.sink()
    server = ctx.server("fsync", *FAST_RETRIES, env=fsyncs.env)
    api = ctx.api(server)
    await api.connect_receiver(sink.path_url("r0"))
    sender = await api.connect_sender()
    publishing = Publishing(ctx.http, [server.url], sender, seed_workers=4, batch_workers=1)
    stop = asyncio.Event()
    load = asyncio.create_task(publishing.run(stop))
    await asyncio.sleep(1.0)
    fsyncs.fail(True)
    failing_from = time.monotonic()
    await asyncio.sleep(FAILING_SECONDS / 2)
    ready_meanwhile = await api.ready()
    await asyncio.sleep(FAILING_SECONDS / 2)
    failing_until = time.monotonic()
    fsyncs.fail(False)
    await asyncio.sleep(2.0)
    stop.set()
    await load
    inside = [s for start, end, s in publishing.log if start > failing_from and end < failing_until]
    after = [s for start, _, s in publishing.log if start > failing_until]
    injected = fsyncs.count
    acknowledged_inside = sum(1 for status in inside if 200 <= status < 300)
    recovered = any(200 <= status < 300 for status in after)
    exit_code = None if server.running else server.terminate()
    say(
        f"  {injected} fsyncs failed in {FAILING_SECONDS:g} s; publishes made and answered "
        f"meanwhile: {len(inside)}, {acknowledged_inside} acknowledged, "
        f"{inside.count(503)} refused 503; /readyz meanwhile: "
        f"{'ready' if ready_meanwhile else 'not ready'}; afterwards "
        + ("acknowledging again" if recovered else f"exit code {exit_code}")
    )
    outcome.check(injected > 0, "no fsync failed: the shim did not take")
    outcome.check(
        acknowledged_inside == 0,
        f"{acknowledged_inside} publishes were acknowledged while every fsync failed",
    )
    outcome.check(not ready_meanwhile, "/readyz said ready while every fsync failed")
    outcome.check(
        recovered or (exit_code is not None and exit_code != 0),
        "after the failures the broker neither acknowledged publishes again nor stopped",
    )
    # The crash while fsync fails: what was refused must stay refused after a restart.
    fsyncs.fail(True)
    refused_last = Publishing(ctx.http, [server.url], sender, seed_workers=2, batch_workers=1)
    await publish_for(refused_last, 0.5)
    server.kill()
    fsyncs.fail(False)
    outcome.check(
        not refused_last.acked, f"{len(refused_last.acked)} publishes acknowledged while failing"
    )
    server.env = {}
    server.restart()
    arrivals = Arrivals(ctx.http, sink, "/r0")
    acked = set(publishing.acked)
    lost = await missing_after([arrivals], acked)
    await asyncio.sleep(1.0)  # anything stored but refused would arrive meanwhile too
    phantoms = len(await arrivals.refresh() - acked)
    say(
        f"  {len(refused_last.log)} more refused, then kill -9 while failing; "
        f"after a start without the shim: {len(acked)} acknowledged, lost "
        f"{lost}; delivered though refused: {phantoms}"
    )
    outcome.check(lost == 0, f"{lost} acknowledged messages never arrived")
    outcome.check(phantoms == 0, f"{phantoms} messages whose publish was refused were delivered")
    outcome.figures = {
        "fsyncs failed": f"{injected}",
        "acknowledged while failing": f"{acknowledged_inside} of {len(inside)}",
        "afterwards": "recovered" if recovered else f"exit {exit_code}",
        "acknowledged": f"{len(acked):,}",
        "lost": f"{lost}",
        "refused but delivered": f"{phantoms}",
    }
    return outcome
