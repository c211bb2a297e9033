"""Chaotic receivers beside a healthy one. The chaotic receiver (`bench.sink`'s
`/chaos` path) fails 60% of its deliveries at random: 500, 503 and 429 with
`Retry-After: 1`, hangs past `--delivery-timeout`, dropped connections. The healthy
one answers at once. Checks: the healthy receiver gets every message without being
held up (its delivery latency stays far below the delivery timeout a hang costs), and
every message to the chaotic one ends acknowledged or dead-lettered, none in limbo."""

from __future__ import annotations

import asyncio
import time

from torture.harness import (
    FAST_RETRIES,
    Api,
    Arrivals,
    Context,
    Outcome,
    missing_after,
    percentile,
    say,
)

DELIVERY_TIMEOUT = 2.0
MAX_ATTEMPTS = 5
# A healthy receiver held up behind a hang would wait out the delivery timeout.
HEALTHY_P99_LIMIT = DELIVERY_TIMEOUT / 2
PUBLISH_RATE = 50.0  # messages per second, so the healthy latency is measured throughout
SETTLE_SECONDS = 180.0


async def run(ctx: Context) -> Outcome:
    outcome = Outcome("chaotic receivers")
    messages = 50 if ctx.short else 300
    sink = ctx.sink()
    server = ctx.server(
        "chaos",
        *FAST_RETRIES,
        "--delivery-timeout",
        f"{DELIVERY_TIMEOUT:g}s",
        "--max-attempts",
        str(MAX_ATTEMPTS),
    )
    api = ctx.api(server)
    await api.connect_receiver(sink.path_url("r0"))
    await api.connect_receiver(sink.path_url("chaos"))
    sender = await api.connect_sender()
    started = time.monotonic()
    acked: set[str] = set()
    for number in range(messages):
        await asyncio.sleep(max(0.0, started + number / PUBLISH_RATE - time.monotonic()))
        answer = await api.ok("POST", "/send", {"id": sender, "body": f"t{time.monotonic_ns()}"})
        acked.add(str(answer["message_id"]))
    healthy = Arrivals(ctx.http, sink, "/r0")
    outcome.check(
        await missing_after([healthy], acked) == 0,
        "the healthy receiver did not get every message",
    )
    healthy_done = time.monotonic() - started
    async with ctx.http.get(f"{sink.url}/_latencies?path=/r0") as response:
        latencies = [ns / 1e9 for ns in await response.json()]
    settled = await _settle(api, SETTLE_SECONDS)
    chaotic = await Arrivals(ctx.http, sink, "/chaos").refresh()
    dead = await api.dead_letters()
    limbo = await api.backlog()
    async with ctx.http.get(f"{sink.url}/_stats") as response:
        kinds = (await response.json())["flaky"]
    p50, p99, worst = (percentile(latencies, p) for p in (50, 99, 100))
    say(
        f"  {messages} messages at {PUBLISH_RATE:g}/s; healthy receiver had all after "
        f"{healthy_done:.1f} s, latency p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
        f"max {worst * 1000:.0f} ms; chaotic receiver: {len(chaotic & acked)} acknowledged, "
        f"{dead} dead-lettered, {limbo} in limbo after {time.monotonic() - started:.0f} s; "
        f"what it did: {kinds}"
    )
    outcome.check(settled, f"the backlog did not empty within {SETTLE_SECONDS:g} s")
    outcome.check(
        p99 < HEALTHY_P99_LIMIT,
        f"the healthy receiver was held up: p99 {p99:.2f} s (limit {HEALTHY_P99_LIMIT:g} s)",
    )
    outcome.check(
        len(chaotic & acked) + dead == messages and limbo == 0,
        f"{messages - len(chaotic & acked) - dead} messages to the chaotic receiver are "
        "neither acknowledged nor dead-lettered",
    )
    outcome.figures = {
        "messages": f"{messages}",
        "healthy p50/p99/max": f"{p50 * 1000:.1f} / {p99 * 1000:.1f} / {worst * 1000:.0f} ms",
        "chaotic acknowledged": f"{len(chaotic & acked)}",
        "dead-lettered": f"{dead}",
        "limbo": f"{limbo}",
    }
    return outcome


async def _settle(api: Api, timeout: float) -> bool:
    """Wait until no message waits for any receiver (dead letters aside)."""
    deadline = time.monotonic() + timeout
    while await api.backlog() > 0:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.5)
    return True
