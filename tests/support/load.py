"""Helpers for end-to-end delivery tests: publishing many messages, free ports, and
bounded waits on what a receiver or the dead-letter store shows."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from tests.support.client import SeedClient
from tests.support.receiver import Receiver

# Retries within a fraction of a second, so failure paths take seconds, not minutes.
FAST_RETRIES = ("--retry-base", "0.05", "--retry-max", "0.5")
# How many /send calls a test keeps in flight at once.
PUBLISH_CONCURRENCY = 32


async def publish_many(
    client: SeedClient,
    sender_id: int,
    bodies: Sequence[str],
    concurrency: int = PUBLISH_CONCURRENCY,
) -> list[str]:
    """Send every body (each must be answered 200); the message ids, in body order."""
    gate = asyncio.Semaphore(concurrency)

    async def one(body: str) -> str:
        async with gate:
            answer = await client.send(sender_id, body)
        return str(answer["message_id"])

    return list(await asyncio.gather(*(one(body) for body in bodies)))


def unused_port() -> int:
    """A loopback port nothing listens on right now (connections to it are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.02
) -> None:
    """Poll `condition` until it holds; fails the test with `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)


def received_ids(receiver: Receiver) -> Counter[str]:
    """How many times each message id was acknowledged by `receiver`."""
    return Counter(record.message_id for record in receiver.received)


async def wait_for_ids(receiver: Receiver, expected: Iterable[str], timeout: float) -> Counter[str]:
    """Wait until every id in `expected` reached `receiver`; returns the counts of all
    ids received, so the caller can report duplicates."""
    wanted = set(expected)
    try:
        await wait_until(
            lambda: wanted <= received_ids(receiver).keys(),
            timeout,
            f"{len(wanted)} distinct messages",
            interval=0.05,
        )
    except AssertionError:
        counts = received_ids(receiver)
        missing = wanted - counts.keys()
        raise AssertionError(
            f"{len(missing)} of {len(wanted)} messages never arrived within {timeout:g} s "
            f"({len(receiver.received)} deliveries received, {duplicates(counts)} duplicates)"
        ) from None
    return received_ids(receiver)


def duplicates(counts: Counter[str]) -> int:
    """Deliveries beyond the first of each message."""
    return sum(count - 1 for count in counts.values())


async def wait_for_dead_letters(
    client: SeedClient, count: int, timeout: float = 20.0
) -> list[dict[str, Any]]:
    """Poll GET /v1/dead-letters until it lists at least `count` entries."""
    deadline = time.monotonic() + timeout
    while True:
        letters = await client.dead_letters()
        if len(letters) >= count:
            return letters
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:g} s waiting for {count} dead letters: {letters}"
            )
        await asyncio.sleep(0.05)
