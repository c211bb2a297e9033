"""PostgreSQL faults, with two broker nodes sharing one database: a node `kill -9`ed
mid-stream; PostgreSQL itself restarted mid-stream; the network between one node and
PostgreSQL cut for 10 s (a proxy of ours, torture/proxy.py) and restored.

Publishes go to both nodes throughout; two receivers take every message. Checks:
nothing acknowledged is lost; no attempt is handed out twice (the sink sees each
delivery's `mq-attempt`: a delivery made again after a lease expired comes with a
higher one, and is counted as a duplicate, not a failure); every node is ready again
by itself, and deliveries resume. The database is a throwaway cluster of the run's
own (tests/support/postgres.py, durable), or the server `--store` names (then
PostgreSQL is not restarted). Skipped, saying why, where neither can be had."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

from bench.stores import PostgresStores, StoreError, ThrowawayPostgres
from tests.support.postgres import postgres_available
from tests.support.server import ServerProcess

from torture.harness import (
    FAST_RETRIES,
    Arrivals,
    Context,
    Outcome,
    Publishing,
    duplicates,
    missing_after,
    say,
)
from torture.proxy import CuttableProxy

# A short lease, so a dead node's deliveries move on within seconds (it must outlast
# the delivery timeout by 5 s).
NODE_ARGS = (*FAST_RETRIES, "--lease-seconds", "7s", "--delivery-timeout", "2s")
CUT_SECONDS = 10.0
RECOVERY_SECONDS = 60.0


async def run(ctx: Context) -> Outcome:
    outcome = Outcome("PostgreSQL: nodes and database")
    try:
        # bench.stores runs its own event loops: from a thread of their own.
        stores = await asyncio.to_thread(_stores, ctx)
    except StoreError as exc:
        outcome.skipped = str(exc)
        return outcome
    if isinstance(stores, str):
        outcome.skipped = stores
        return outcome
    try:
        figures: dict[str, str] = {}
        steps: list[tuple[str, Step]] = [("node kill -9", _node_killed)]
        if isinstance(stores, ThrowawayPostgres):
            steps.append(("PostgreSQL restart", _database_restarted))
        else:
            say("  PostgreSQL restart: not tried on a server the run does not own (--store)")
        steps.append((f"network cut {CUT_SECONDS:g} s", _network_cut))
        for name, step in steps:
            store = await asyncio.to_thread(stores.open, ctx.workdir, name.split()[0])
            try:
                figures[name] = await _trial(ctx, outcome, name, store.server_args[1], step, stores)
            finally:
                ctx.stop_all()
                await asyncio.to_thread(stores.release, store)
        outcome.figures = figures
    finally:
        await asyncio.to_thread(stores.close)
    return outcome


def _stores(ctx: Context) -> PostgresStores | str:
    if ctx.store_url:
        return PostgresStores.at(ctx.store_url, keep=False)
    reason = postgres_available()
    if reason is not None:
        return reason
    return ThrowawayPostgres(keep=False)


# A fault, given the run, the two nodes, the proxy in front of the first and the stores:
# it does its harm while publishes flow, and returns when the harm is over.
Step = Callable[[Context, list[ServerProcess], CuttableProxy, PostgresStores], Awaitable[str]]


async def _trial(
    ctx: Context, outcome: Outcome, name: str, url: str, step: Step, stores: PostgresStores
) -> str:
    host, port = urlsplit(url).hostname or "127.0.0.1", urlsplit(url).port or 5432
    proxy = await CuttableProxy(host, port).start()
    try:
        through_proxy = urlunsplit(urlsplit(url)._replace(netloc=_netloc(url, proxy.port)))
        sink = ctx.sink()
        # In threads: the proxy runs on this event loop, and a node starting through it
        # needs it to answer meanwhile.
        nodes = [
            await asyncio.to_thread(ctx.server, f"{name}-a", *NODE_ARGS, "--store", through_proxy),
            await asyncio.to_thread(ctx.server, f"{name}-b", *NODE_ARGS, "--store", url),
        ]
        api = ctx.api(nodes[0])
        for path in ("r0", "r1"):
            await api.connect_receiver(sink.path_url(path))
        sender = await api.connect_sender()
        await asyncio.sleep(1.5)  # the other node hears of the receivers within a second
        publishing = Publishing(ctx.http, [node.url for node in nodes], sender, pace=0.005)
        stop = asyncio.Event()
        load = asyncio.create_task(publishing.run(stop))
        await asyncio.sleep(1.5)
        harm = await step(ctx, nodes, proxy, stores)
        started = time.monotonic()
        ready = [await ctx.api(node).wait_ready(RECOVERY_SECONDS) for node in nodes]
        recovered = time.monotonic() - started
        await asyncio.sleep(2.0)  # publishes after the recovery, through both nodes
        stop.set()
        await load
        after = [s for start, _, s in publishing.log if start > started + recovered]
        arrivals = [Arrivals(ctx.http, sink, path) for path in ("/r0", "/r1")]
        acked = set(publishing.acked)
        lost = await missing_after(arrivals, acked)
        extra, same_attempt = await duplicates(ctx.http, sink)
    finally:
        await proxy.close()
    summary = (
        f"{len(acked):,} acknowledged, lost {lost}, duplicates {extra} "
        f"(same attempt twice: {same_attempt}), ready again in {recovered:.1f} s"
    )
    say(f"  {name}: {harm}; {summary}; answers {dict(publishing.answers)}")
    outcome.check(lost == 0, f"{name}: {lost} acknowledged deliveries never arrived")
    outcome.check(same_attempt == 0, f"{name}: {same_attempt} attempts were handed out twice")
    outcome.check(all(ready), f"{name}: a node was not ready {RECOVERY_SECONDS:g} s after")
    outcome.check(
        any(200 <= status < 300 for status in after),
        f"{name}: no publish was acknowledged after the recovery",
    )
    return f"lost {lost}, dup {extra} (same attempt {same_attempt}), ready {recovered:.1f} s"


def _netloc(url: str, port: int) -> str:
    parts = urlsplit(url)
    user = f"{parts.netloc.rsplit('@', 1)[0]}@" if "@" in parts.netloc else ""
    return f"{user}127.0.0.1:{port}"


async def _node_killed(
    ctx: Context, nodes: list[ServerProcess], proxy: CuttableProxy, stores: PostgresStores
) -> str:
    nodes[1].kill()
    await asyncio.sleep(1.0)  # the load goes on through the other node
    started = time.monotonic()
    await asyncio.to_thread(nodes[1].restart)
    return f"node b killed, listening again in {time.monotonic() - started:.2f} s"


async def _database_restarted(
    ctx: Context, nodes: list[ServerProcess], proxy: CuttableProxy, stores: PostgresStores
) -> str:
    assert isinstance(stores, ThrowawayPostgres)
    started = time.monotonic()
    await asyncio.to_thread(stores.cluster.restart)
    return f"PostgreSQL stopped (fast) and started again in {time.monotonic() - started:.1f} s"


async def _network_cut(
    ctx: Context, nodes: list[ServerProcess], proxy: CuttableProxy, stores: PostgresStores
) -> str:
    proxy.cut()
    await asyncio.sleep(CUT_SECONDS / 2)
    ready = await ctx.api(nodes[0]).ready()
    await asyncio.sleep(CUT_SECONDS / 2)
    proxy.restore()
    said = "ready" if ready else "not ready"
    return f"node a cut off from PostgreSQL for {CUT_SECONDS:g} s (its /readyz meanwhile: {said})"
