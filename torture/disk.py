"""A full disk, on a tmpfs of 8 MiB (root only: elsewhere skipped, saying why).

The receiver takes deliveries and never answers (`bench.sink` paused), so they stay
claimed. Then the disk is filled to the last byte: publishes must be refused with 503
`store-unavailable` and `/readyz` must say not ready. Then `kill -9` with those claims
and the disk still full: the broker must start again (no crash loop), refuse publishes
with 503 and stay not ready, and, once space is freed, become ready by itself, take
publishes, and deliver every message it acknowledged."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.support.full_disk import cannot_mount_reason, fill, free, tmpfs_mounted

from torture.harness import Arrivals, Context, Outcome, missing_after, say

CLAIMED = 20
BIG_BODY = "x" * 8000  # fills the WAL's spare room within a few publishes


async def run(ctx: Context) -> Outcome:
    outcome = Outcome("full disk (tmpfs)")
    reason = cannot_mount_reason()
    if reason is not None:
        outcome.skipped = reason
        return outcome
    with tmpfs_mounted(ctx.workdir / "disk") as disk:
        await _run_on(ctx, outcome, disk)
    return outcome


async def _run_on(ctx: Context, outcome: Outcome, disk: Path) -> None:
    sink = ctx.sink()
    sink.control("pause")
    server = ctx.server("disk", "--delivery-timeout", "20s", data_dir=disk / "data")
    api = ctx.api(server)
    await api.connect_receiver(sink.path_url("held"))
    sender = await api.connect_sender()
    acked: set[str] = set()
    for number in range(CLAIMED):
        answer = await api.ok("POST", "/send", {"id": sender, "body": f"claimed {number}"})
        acked.add(str(answer["message_id"]))
    await asyncio.sleep(0.5)  # claimed and sent by now
    fill(disk)
    statuses: list[int] = []
    for _ in range(200):
        status, answer = await api.call("POST", "/send", {"id": sender, "body": BIG_BODY})
        statuses.append(status)
        if status == 200:
            acked.add(str(answer["message_id"]))  # the WAL's spare room took it
        else:
            break
    refused = statuses[-1] == 503 and str(answer.get("type", "")).endswith("store-unavailable")
    outcome.check(refused, f"a full disk did not refuse publishes with 503: {statuses[-3:]}")
    outcome.check(not await api.ready(), "/readyz said ready on a full disk")
    say(f"  disk full: {statuses.count(200)} more publishes fitted, then {statuses[-1]}")

    server.kill()
    started = time.monotonic()
    try:
        server.restart()
    except RuntimeError as exc:
        outcome.check(False, f"kill -9 on a full disk: it did not start again: {exc}")
        return
    restart = time.monotonic() - started
    status, answer = await api.call("POST", "/send", {"id": sender, "body": "no room"})
    outcome.check(status == 503, f"after the restart, a publish on a full disk answered {status}")
    outcome.check(not await api.ready(), "after the restart, /readyz said ready on a full disk")
    warned = any("starting anyway" in line for line in server.lines)
    outcome.check(warned, "the restart on a full disk did not log why it starts anyway")
    say(f"  kill -9 with {CLAIMED} claimed and the disk full: listening again in {restart:.2f} s")

    free(disk)
    started = time.monotonic()
    ready = await api.wait_ready(30)
    outcome.check(ready, "not ready within 30 s of the disk being freed")
    recovered = time.monotonic() - started
    answer = await api.ok("POST", "/send", {"id": sender, "body": "room again"})
    acked.add(str(answer["message_id"]))
    sink.control("resume")
    lost = await missing_after([Arrivals(ctx.http, sink, "/held")], acked)
    outcome.check(lost == 0, f"{lost} acknowledged messages never arrived")
    say(f"  space freed: ready after {recovered:.2f} s; {len(acked)} acknowledged, lost {lost}")
    outcome.figures = {
        "acknowledged": f"{len(acked)}",
        "lost": f"{lost}",
        "restart on a full disk": f"{restart:.2f} s",
        "ready after freeing": f"{recovered:.2f} s",
    }
