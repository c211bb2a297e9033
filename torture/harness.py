"""What every fault shares: a broker process, the sink receiver, publishers that remember
what was acknowledged, and the check that every acknowledged message arrived.

The broker is the real `mqpy serve` (tests/support/server.py's ServerProcess, which can
kill it and start it again on the same port and store); the receivers are paths of one
`bench.sink` process, which records every distinct `webhook-id` per path. A message
counts as acknowledged when the broker answered its publish 200 (`/send`) or listed its
id in a batch answer; it counts as lost when an acknowledged id never reaches a
receiver that should have it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from bench.run import Sink
from tests.support.server import ServerProcess

TOPIC = "default"  # the seed's topic: seed receivers and batch publishes meet there
# Fast retries, so a fault's aftermath settles in seconds.
FAST_RETRIES = ("--retry-base", "0.05", "--retry-max", "0.5")
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=15)
DELIVERY_WAIT = 60.0  # how long acknowledged messages get to arrive after a fault


@dataclass
class Outcome:
    """One fault's result: its figures (name and formatted value, in order), and every
    check that failed, as a sentence. `skipped` says why it could not run here."""

    fault: str
    figures: dict[str, str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    skipped: str | None = None
    seconds: float = 0.0

    def check(self, holds: bool, failure: str) -> bool:
        if not holds:
            self.failures.append(failure)
            say(f"  FAILED: {failure}")
        return holds

    @property
    def verdict(self) -> str:
        if self.skipped is not None:
            return "SKIPPED"
        return "FAIL" if self.failures else "PASS"


def say(line: str) -> None:
    print(line, flush=True)


@dataclass
class Context:
    """What the faults are run with: the run's options, its work directory and the HTTP
    client; `closers` stop what a fault started, however it ended."""

    workdir: Path
    http: aiohttp.ClientSession  # keeps connections alive: for load
    control: aiohttp.ClientSession  # a connection per request: survives broker restarts
    short: bool
    trials: int
    soak_deliveries: int
    store_url: str | None
    rng: random.Random
    sinks: list[Sink] = field(default_factory=list)
    servers: list[ServerProcess] = field(default_factory=list)

    def sink(self) -> Sink:
        sink = Sink(max_seconds=3600)
        self.sinks.append(sink)
        return sink

    def server(
        self, name: str, *args: str, env: dict[str, str] | None = None, data_dir: Path | None = None
    ) -> ServerProcess:
        """A broker on a fresh data directory (or `data_dir`), started."""
        server = ServerProcess(data_dir or self.workdir / f"{name}-data", args, env)
        self.servers.append(server)
        return server.start()

    def api(self, server: ServerProcess) -> Api:
        return Api(self.control, server.url)

    def stop_all(self) -> None:
        for server in self.servers:
            server.kill()
        for sink in self.sinks:
            sink.stop()
        self.servers.clear()
        self.sinks.clear()


class Api:
    """The broker's HTTP API, as a client uses it."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.http.request(
            method, self.url + path, json=body, timeout=REQUEST_TIMEOUT
        ) as response:
            return response.status, await response.json(content_type=None)

    async def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = await self.call(method, path, body)
        if status >= 300:
            raise RuntimeError(f"{method} {path} answered {status}: {answer}")
        return answer

    async def connect_receiver(self, url: str) -> int:
        answer = await self.ok("POST", "/connect", {"ClientURL": url, "mode": "receive"})
        return int(answer["id"])

    async def connect_sender(self) -> int:
        answer = await self.ok("POST", "/connect", {"ClientURL": "", "mode": "send"})
        return int(answer["id"])

    async def ready(self) -> bool:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            status, _ = await self.call("GET", "/readyz")
            return status == 200
        return False

    async def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not await self.ready():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def backlog(self) -> int:
        """Messages on the seed topic some receiver has not acknowledged, dead letters
        aside (/v1/status)."""
        status = await self.ok("GET", "/v1/status")
        return sum(int(t["backlog"]) for t in status["topics"] if t["topic"] == TOPIC)

    async def dead_letters(self) -> int:
        status = await self.ok("GET", "/v1/status")
        return int(status["dead_letters"])


@dataclass
class Publishing:
    """Publishers that keep publishing until told to stop, half through `/send` and half
    as batches (`POST /v1/topics/default/messages`), spread over `urls` (nodes).

    `acked` holds the id of every message whose publish was answered with success;
    `answers` counts the statuses (0: no answer: refused, cut off, timed out), and
    `log` holds each request's (start, end, status), for faults that need timing."""

    http: aiohttp.ClientSession
    urls: Sequence[str]
    sender_id: int | None
    batch_size: int = 20
    seed_workers: int = 6
    batch_workers: int = 2
    pace: float = 0.0  # seconds each worker waits between its requests
    acked: list[str] = field(default_factory=list)
    answers: Counter[int] = field(default_factory=Counter)
    log: list[tuple[float, float, int]] = field(default_factory=list)
    _turn: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        workers = [self._seed(stop) for _ in range(self.seed_workers if self.sender_id else 0)]
        workers += [self._batches(stop) for _ in range(self.batch_workers)]
        await asyncio.gather(*workers)

    def _next_url(self) -> str:
        self._turn += 1
        return self.urls[self._turn % len(self.urls)]

    async def _seed(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            body = {"id": self.sender_id, "body": f"t{time.monotonic_ns()}"}
            answer = await self._post(self._next_url() + "/send", body)
            if answer is not None and "message_id" in answer:
                self.acked.append(str(answer["message_id"]))

    async def _batches(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            messages = [{"body": f"t{time.monotonic_ns()}"} for _ in range(self.batch_size)]
            answer = await self._post(
                f"{self._next_url()}/v1/topics/{TOPIC}/messages", {"messages": messages}
            )
            if answer is not None and "results" in answer:
                self.acked += [str(r["id"]) for r in answer["results"] if "id" in r]

    async def _post(self, url: str, body: Any) -> Any:
        """The answer's JSON on a 2xx, else None (the failure is counted)."""
        started = time.monotonic()
        status = 0
        try:
            async with self.http.post(url, json=body, timeout=REQUEST_TIMEOUT) as response:
                status = response.status
                answer = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            answer = None
        self.answers[status] += 1
        self.log.append((started, time.monotonic(), status))
        if status == 0:
            await asyncio.sleep(0.05)  # the broker is down: do not spin
        elif self.pace:
            await asyncio.sleep(self.pace)
        if not 200 <= status < 300:
            return None
        return answer


async def publish_for(publishing: Publishing, seconds: float) -> None:
    """Publish for `seconds`, then stop and wait for the requests in flight."""
    stop = asyncio.Event()
    task = asyncio.create_task(publishing.run(stop))
    await asyncio.sleep(seconds)
    stop.set()
    await task


class Arrivals:
    """The distinct message ids one sink path has received, fetched as they grow."""

    def __init__(self, http: aiohttp.ClientSession, sink: Sink, path: str) -> None:
        self.http = http
        self.sink = sink
        self.path = path
        self.ids: set[str] = set()
        self._count = 0

    async def refresh(self) -> set[str]:
        url = f"{self.sink.url}/_ids?path={self.path}&since={self._count}"
        async with self.http.get(url, timeout=REQUEST_TIMEOUT) as response:
            new: list[str] = await response.json()
        self.ids.update(new)
        self._count += len(new)
        return self.ids


async def sink_stats(http: aiohttp.ClientSession, sink: Sink) -> dict[str, Any]:
    async with http.get(f"{sink.url}/_stats", timeout=REQUEST_TIMEOUT) as response:
        stats: dict[str, Any] = await response.json()
    return stats


async def missing_after(
    arrivals: Sequence[Arrivals], expected: set[str], timeout: float = DELIVERY_WAIT
) -> int:
    """Wait until every path has every id of `expected`; the number of (path, id) pairs
    still missing at the deadline (0: nothing lost)."""
    deadline = time.monotonic() + timeout
    while True:
        missing = 0
        for path in arrivals:
            missing += len(expected - await path.refresh())
        if missing == 0 or time.monotonic() > deadline:
            return missing
        await asyncio.sleep(0.2)


async def duplicates(http: aiohttp.ClientSession, sink: Sink) -> tuple[int, int]:
    """Deliveries beyond the first of each message, over every path; and how many of
    them repeated an attempt number instead of raising it (handed out twice at once)."""
    stats = await sink_stats(http, sink)
    distinct = stats["distinct_by_path"]
    extra = sum(count - distinct.get(path, 0) for path, count in stats["by_path"].items())
    return extra, int(stats["same_attempt_repeats"])


def rss_kib(pid: int) -> int:
    """Resident memory of a process, KiB (0 once it is gone)."""
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def slope(points: Sequence[tuple[float, float]]) -> float:
    """The least-squares slope of y over x."""
    if len(points) < 2:
        return 0.0
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    fitted = statistics.linear_regression(xs, ys)
    return float(fitted.slope)


def percentile(values: Sequence[float], percent: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, round(percent / 100 * (len(ordered) - 1)))
    return ordered[index]
