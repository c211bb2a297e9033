"""`make torture`: the faults mq-py is tried against, each checked for what a user would
see (nothing acknowledged lost, nothing left in limbo, recovery without help).

    python -m torture.run [--short] [--only kill9,chaos,disk,fsync,graceful,soak,postgres]
                          [--trials N] [--soak-deliveries N] [--store postgresql://...]

Each fault starts real `mqpy serve` processes on ephemeral ports and a real receiver
(`bench.sink`), prints a line per trial or step, and the run ends with a table. The exit
status is 1 when any check failed, so CI fails on a regression. See torture/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import aiohttp
from bench.run import stop_children

from torture import chaos, disk, fsync, graceful, kill9, postgres, soak
from torture.harness import Context, Outcome, say

Fault = Callable[[Context], Awaitable[Outcome]]
FAULTS: dict[str, Fault] = {
    "kill9": kill9.run,
    "chaos": chaos.run,
    "disk": disk.run,
    "fsync": fsync.run,
    "graceful": graceful.run,
    "soak": soak.run,
    "postgres": postgres.run,
}
# (--short, full): what the closing note quotes, and what CI can afford in ~5 minutes.
TRIALS = (5, 100)
SOAK_DELIVERIES = (50_000, 300_000)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="small counts, as CI runs it")
    parser.add_argument(
        "--only",
        default=",".join(FAULTS),
        help=f"faults to run, comma-separated: {','.join(FAULTS)}",
    )
    parser.add_argument("--trials", type=int, help="kill -9 trials (100; --short: 5)")
    parser.add_argument(
        "--soak-deliveries", type=int, help="deliveries in the soak (300,000; --short: 20,000)"
    )
    parser.add_argument(
        "--store",
        help="a PostgreSQL server (postgresql://...) for the postgres faults, "
        "instead of a throwaway cluster of the run's own",
    )
    parser.add_argument("--seed", type=int, default=14, help="the random generator's seed")
    args = parser.parse_args(argv)
    args.faults = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in args.faults if name not in FAULTS]
    if unknown:
        parser.error(
            f"--only: no fault named {', '.join(unknown)}; choose from {', '.join(FAULTS)}"
        )
    size = 0 if args.short else 1
    args.trials = args.trials or TRIALS[size]
    args.soak_deliveries = args.soak_deliveries or SOAK_DELIVERIES[size]
    return args


async def run_faults(args: argparse.Namespace, workdir: Path) -> list[Outcome]:
    outcomes = []
    control_connections = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession() as http,
        aiohttp.ClientSession(connector=control_connections) as control,
    ):
        for name in args.faults:
            ctx = Context(
                workdir=workdir / name,
                http=http,
                control=control,
                short=args.short,
                trials=args.trials,
                soak_deliveries=args.soak_deliveries,
                store_url=args.store,
                rng=random.Random(args.seed),
            )
            ctx.workdir.mkdir(parents=True)
            say(f"== {name}")
            started = time.monotonic()
            try:
                outcome = await FAULTS[name](ctx)
            except Exception as exc:  # noqa: BLE001 - one fault's crash fails it, the run goes on
                outcome = Outcome(name, failures=[f"the fault's run stopped: {exc!r}"])
                say(f"  FAILED: {outcome.failures[0]}")
            finally:
                ctx.stop_all()
            outcome.seconds = time.monotonic() - started
            if outcome.skipped:
                say(f"  skipped: {outcome.skipped}")
            outcomes.append(outcome)
    return outcomes


def render(outcomes: Sequence[Outcome]) -> str:
    lines = [f"{'fault':<31} {'verdict':<8} {'time':>7}  figures", "-" * 90]
    for outcome in outcomes:
        figures = "; ".join(f"{name} {value}" for name, value in outcome.figures.items())
        if outcome.skipped:
            figures = outcome.skipped
        lines.append(
            f"{outcome.fault:<31} {outcome.verdict:<8} {outcome.seconds:>6.0f}s  {figures}"
        )
        lines += [f"{'':<49}failed: {failure}" for failure in outcome.failures]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="mqpy-torture-"))
    started = time.monotonic()
    try:
        outcomes = asyncio.run(run_faults(args, workdir))
    finally:
        stop_children()
        shutil.rmtree(workdir, ignore_errors=True)
    say("")
    say(render(outcomes))
    say(f"\n{'short' if args.short else 'full'} run, {time.monotonic() - started:.0f} s")
    return 1 if any(outcome.failures for outcome in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
