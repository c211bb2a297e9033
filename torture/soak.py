"""A soak: `--soak-deliveries` deliveries (300,000) through one broker to one receiver,
published in batches while they are delivered, with the broker's resident memory
sampled every second. After a warm-up (the first fifth of the deliveries) its slope
must be flat: less than `SLOPE_LIMIT_MIB` MiB per 100,000 deliveries."""

from __future__ import annotations

import asyncio
import time

from torture.harness import Context, Outcome, rss_kib, say, sink_stats, slope

BATCH = 500
BACKLOG = 20_000  # messages published ahead of delivery at most
SLOPE_LIMIT_MIB = 2.0
SAMPLE_SECONDS = 1.0


async def run(ctx: Context) -> Outcome:
    outcome = Outcome("soak")
    total = ctx.soak_deliveries
    sink = ctx.sink()
    server = ctx.server("soak")
    api = ctx.api(server)
    await api.connect_receiver(sink.path_url("r0"))
    samples: list[tuple[float, float]] = []  # (deliveries, RSS MiB)
    published = 0
    delivered = 0
    started = time.monotonic()
    next_sample = started
    deadline = started + max(600.0, total / 200)
    while delivered < total and time.monotonic() < deadline:
        if published < total and published - delivered < BACKLOG:
            count = min(BATCH, total - published)
            messages = [{"body": f"soak {published + n}"} for n in range(count)]
            answer = await api.ok("POST", "/v1/topics/default/messages", {"messages": messages})
            published += int(answer["accepted"])
        else:
            await asyncio.sleep(0.05)
        if time.monotonic() >= next_sample:
            delivered = int((await sink_stats(ctx.http, sink))["count"])
            samples.append((delivered, rss_kib(server.pid) / 1024))
            next_sample += SAMPLE_SECONDS
    seconds = time.monotonic() - started
    warm = [(x, y) for x, y in samples if x >= total / 5]
    per_100k = slope(warm) * 100_000
    first, last = (warm[0][1], warm[-1][1]) if warm else (0.0, 0.0)
    say(
        f"  {delivered:,} deliveries in {seconds:.0f} s ({delivered / seconds:,.0f}/s); RSS "
        f"after warm-up {first:.1f} MiB -> {last:.1f} MiB, peak "
        f"{max(y for _, y in samples):.1f} MiB; slope {per_100k:+.2f} MiB per 100,000 "
        f"deliveries over {len(warm)} samples"
    )
    outcome.check(delivered >= total, f"only {delivered:,} of {total:,} deliveries arrived")
    outcome.check(
        abs(per_100k) < SLOPE_LIMIT_MIB,
        f"memory grows {per_100k:+.2f} MiB per 100,000 deliveries after warm-up "
        f"(limit {SLOPE_LIMIT_MIB:g})",
    )
    outcome.figures = {
        "deliveries": f"{delivered:,}",
        "rate": f"{delivered / seconds:,.0f}/s",
        "RSS after warm-up": f"{first:.1f} -> {last:.1f} MiB",
        "slope": f"{per_100k:+.2f} MiB/100k",
    }
    return outcome
