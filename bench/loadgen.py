"""The load generator: `/send` requests (or, with `--topic`, the native
`POST /v1/topics/{topic}/messages`) over raw keep-alive HTTP/1.1 connections.

Client, broker and sink share two cores, so the client must cost little: like wrk,
it is callback-driven (`asyncio.Protocol`, no task per request), writes request
bytes built once (or, when paced, one small format per request), and parses a
response only as far as the status code and Content-Length. It runs in its own
process, started by `bench.run`, and prints its result as one JSON object.

Two shapes of load:

- `closed`: `--connections` publishers, each sending its next request as soon as
  its previous one is answered, until `--count` requests or `--duration` seconds,
  whichever comes first (throughput);
- `paced`: open loop, `--rate` requests per second on a fixed schedule for
  `--duration` seconds, whatever the answers do (latency). Each body is
  `t<scheduled send time in ns>` on the monotonic clock, which the sink subtracts
  from its arrival time: a request that waits for a free connection is late from
  its schedule, not from when it finally went out, so a slow broker cannot hide
  its slowness (no coordinated omission). `--warmup` seconds of the same load go
  first with bodies the sink does not count.

    python -m bench.loadgen closed --port P (--sender-id ID | --topic T) [--connections 64] ...
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import cast

from bench.cpu import Meter, Watch, parse_watch
from bench.sink import run_event_loop

HEADER_END = b"\r\n\r\n"
CONTENT_LENGTH = b"\r\ncontent-length:"
HOST = "127.0.0.1"
# A message accepted: the seed /send answers 200, the native publish 201.
ACCEPTED = (200, 201)
# Responses are small JSON objects; a head past this is a broken peer.
MAX_HEAD_BYTES = 64 * 1024


@dataclass(frozen=True)
class Target:
    """Where messages go: the seed `POST /send` as a connected sender, or (with a
    topic) the native `POST /v1/topics/{topic}/messages`, which needs no connection."""

    sender_id: int | None = None
    topic: str | None = None
    batch: int = 0  # with a topic: this many messages per request, as one batch
    send_path: str = "/send"  # MQ Go serves it as /send/ (and redirects /send there)


def send_request(port: int, target: Target, body: str) -> bytes:
    """The raw bytes of one publish (the body must need no JSON escaping)."""
    if target.topic is not None:
        path = b"/v1/topics/%s/messages" % target.topic.encode()
        payload = b'{"body":"%s"}' % body.encode()
        if target.batch:
            payload = b'{"messages":[%s]}' % b",".join([payload] * target.batch)
    else:
        path = target.send_path.encode()
        payload = b'{"id":%d,"body":"%s"}' % (target.sender_id or 0, body.encode())
    return (
        b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (path, HOST.encode(), port, len(payload), payload)
    )


@dataclass
class Result:
    """What one run of the load generator saw."""

    mode: str
    sent: int = 0
    ok: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    failures: int = 0  # connections lost or responses that could not be parsed
    elapsed_s: float = 0.0
    rate: float = 0.0  # messages accepted (200 or 201) per second over elapsed_s
    max_lag_ms: float = 0.0  # paced: how late the latest request went out
    # When the counted run began, on the monotonic clock all processes share (the sink
    # stamps arrivals on it too).
    started_ns: int = 0
    timed_out: bool = False
    # Cores used over the counted run: this process ("loadgen"), each --watch and the
    # whole machine ("machine"); and the run's length as the meter saw it ("seconds").
    usage: dict[str, float] = field(default_factory=dict)


class Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self, owner: Load) -> None:
        self._owner = owner
        self._buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.counted = True  # whether the answer to the request in flight is a figure
        self.in_flight = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.transport = None
            self._owner.lost(self)

    def send(self, request: bytes) -> None:
        assert self.transport is not None
        self.in_flight = True
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while True:
            head_end = buffer.find(HEADER_END)
            if head_end < 0:
                if len(buffer) > MAX_HEAD_BYTES:
                    self._fail()
                return
            head = bytes(buffer[:head_end]).lower()
            length = _content_length(head)
            try:
                status = int(head[9:12])
            except ValueError:
                self._fail()
                return
            end = head_end + 4 + length
            if len(buffer) < end:
                return
            del buffer[:end]
            self.in_flight = False
            self._owner.answered(self, status)

    def hand_to(self, owner: Load) -> None:
        """Carry the next run's requests (the warm-up's connections are reused)."""
        self._owner = owner

    def _fail(self) -> None:
        transport, self.transport = self.transport, None
        if transport is not None:
            transport.close()
        self._owner.lost(self)


def _content_length(head: bytes) -> int:
    start = head.find(CONTENT_LENGTH)
    if start < 0:
        return 0
    start += len(CONTENT_LENGTH)
    end = head.find(b"\r\n", start)
    return int(head[start : end if end >= 0 else len(head)])


class Load:
    """Shared bookkeeping of one run; subclasses decide when the next request goes."""

    def __init__(self, mode: str) -> None:
        self.result = Result(mode)
        self.done = asyncio.Event()
        self.connections: list[Connection] = []
        self.busy = 0
        self.started = 0.0
        self.finished = 0.0

    async def open(self, port: int, count: int) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(count):
            _, protocol = await loop.create_connection(lambda: Connection(self), HOST, port)
            self.connections.append(protocol)

    def adopt(self, connections: list[Connection]) -> None:
        for connection in connections:
            connection.hand_to(self)
        self.connections = connections

    def answered(self, connection: Connection, status: int) -> None:
        self.busy -= 1
        if connection.counted:
            result = self.result
            if status in ACCEPTED:
                result.ok += 1
            else:
                key = str(status)
                result.statuses[key] = result.statuses.get(key, 0) + 1
            self.finished = time.monotonic()
        self.next_for(connection)

    def lost(self, connection: Connection) -> None:
        if connection in self.connections:
            self.connections.remove(connection)
        if connection.in_flight:
            connection.in_flight = False
            self.result.failures += 1
            self.busy -= 1
        if not self.connections:
            self.done.set()

    def next_for(self, connection: Connection) -> None:
        raise NotImplementedError

    def finish(self) -> Result:
        result = self.result
        result.elapsed_s = max(self.finished - self.started, 1e-9)
        result.rate = result.ok / result.elapsed_s
        return result

    def close(self) -> None:
        for connection in self.connections:
            if connection.transport is not None:
                connection.transport.close()


class ClosedLoad(Load):
    """Each connection sends again as soon as it is answered."""

    def __init__(self, request: bytes, count: int, duration: float) -> None:
        super().__init__("closed")
        self._request = request
        self._count = count
        self._duration = duration
        self._deadline = 0.0

    def start(self) -> None:
        self.started = self.finished = time.monotonic()
        self._deadline = self.started + self._duration
        for connection in list(self.connections):
            self.next_for(connection)

    def lost(self, connection: Connection) -> None:
        super().lost(connection)
        if self.busy <= 0:
            self.done.set()  # the others are between requests only at the very end

    def next_for(self, connection: Connection) -> None:
        result = self.result
        if result.sent < self._count and self.finished < self._deadline:
            result.sent += 1
            self.busy += 1
            connection.send(self._request)
        elif self.busy <= 0:
            if result.sent < self._count:
                result.timed_out = True
            self.done.set()


class PacedLoad(Load):
    """Requests leave on a fixed schedule; one waits for a free connection if need be."""

    def __init__(self, port: int, target: Target, rate: float, count: int, warmup: int) -> None:
        super().__init__("paced")
        self._port = port
        self._target = target
        self._interval_ns = round(1e9 / rate)
        self._count = count
        self._warmup = warmup
        self._start_ns = 0
        self._scheduled = 0  # requests whose time has come, warm-up included
        self._idle: collections.deque[Connection] = collections.deque()
        self._waiting: collections.deque[tuple[int, int]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._idle.extend(self.connections)
        self._start_ns = time.monotonic_ns()
        self._tick()

    def _tick(self) -> None:
        now_ns = time.monotonic_ns()
        total = self._warmup + self._count
        while self._scheduled < total:
            due_ns = self._start_ns + self._scheduled * self._interval_ns
            if due_ns > now_ns:
                break
            if self._scheduled == self._warmup:
                self.started = time.monotonic()
            self._waiting.append((self._scheduled, due_ns))
            self._scheduled += 1
        while self._waiting and self._idle:
            self._dispatch(self._idle.popleft())
        if self._scheduled < total:
            loop = asyncio.get_running_loop()
            delay = (self._start_ns + self._scheduled * self._interval_ns - now_ns) / 1e9
            self._timer = loop.call_later(max(delay, 0.0), self._tick)
        elif self.busy <= 0 and not self._waiting:
            self.done.set()

    def _dispatch(self, connection: Connection) -> None:
        number, due_ns = self._waiting.popleft()
        lag_ms = (time.monotonic_ns() - due_ns) / 1e6
        # Warm-up bodies start with "w", which the sink does not take for a send time.
        connection.counted = number >= self._warmup
        mark = "t" if connection.counted else "w"
        if connection.counted:
            self.result.sent += 1
            self.result.max_lag_ms = max(self.result.max_lag_ms, lag_ms)
        self.busy += 1
        connection.send(send_request(self._port, self._target, f"{mark}{due_ns}"))

    def lost(self, connection: Connection) -> None:
        if connection in self._idle:
            self._idle.remove(connection)
        super().lost(connection)

    def next_for(self, connection: Connection) -> None:
        if self._waiting:
            self._dispatch(connection)
            return
        self._idle.append(connection)
        if self._scheduled >= self._warmup + self._count and self.busy <= 0:
            self.done.set()


async def run_load(args: argparse.Namespace) -> Result:
    if args.mode == "paced":
        count = round(args.rate * args.duration)
        warmup = round(args.rate * args.warmup)
        paced = PacedLoad(args.port, args.target, args.rate, count, warmup)
        await paced.open(args.port, args.connections)
        result = await _drive(paced, args.warmup + args.duration + args.timeout, args.watch)
        paced.close()
        return result
    request = send_request(args.port, args.target, "x" * args.body_bytes)
    warmup_load = ClosedLoad(request, round(args.warmup), args.duration)
    await warmup_load.open(args.port, args.connections)
    connections = warmup_load.connections
    if args.warmup >= 1:
        await _drive(warmup_load, args.duration + args.timeout)
    load = ClosedLoad(request, args.count, args.duration)
    load.adopt(connections)
    result = await _drive(load, args.duration + args.timeout, args.watch)
    load.close()
    return result


async def _drive(
    load: ClosedLoad | PacedLoad, budget: float, watch: dict[str, Watch] | None = None
) -> Result:
    meter = Meter({**(watch or {}), "loadgen": os.getpid()}).start()
    load.result.started_ns = time.monotonic_ns()
    load.start()
    try:
        await asyncio.wait_for(load.done.wait(), budget)
    except TimeoutError:
        load.result.timed_out = True
    result = load.finish()
    result.usage = meter.usage()
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Load mq-py's /send; prints a JSON result.")
    parser.add_argument("mode", choices=["closed", "paced"])
    parser.add_argument("--port", type=int, required=True, help="the broker's port on 127.0.0.1")
    parser.add_argument("--sender-id", type=int, help="a connected sender's id, for /send")
    parser.add_argument(
        "--topic", help="publish to this topic through POST /v1/topics/TOPIC/messages instead"
    )
    parser.add_argument(
        "--send-path", default="/send", help="the seed publish route's path (MQ Go: /send/)"
    )
    parser.add_argument(
        "--batch", type=int, default=0, help="with --topic: messages per request, as one batch"
    )
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connections")
    parser.add_argument("--count", type=int, default=20_000, help="closed: requests at most")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load at most")
    parser.add_argument("--rate", type=float, default=500.0, help="paced: requests per second")
    parser.add_argument(
        "--warmup",
        type=float,
        default=0.0,
        help="uncounted load first: paced, in seconds; closed, in requests",
    )
    parser.add_argument("--body-bytes", type=int, default=100, help="closed: message body size")
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="seconds past the load to wait for answers"
    )
    parser.add_argument(
        "--watch",
        action="append",
        default=[],
        metavar="NAME=WATCH",
        help="report the CPU used over the counted run, as NAME, by process WATCH and its "
        "descendants, or (WATCH comm:postgres) by every process with that command name",
    )
    args = parser.parse_args(argv)
    if (args.sender_id is None) == (args.topic is None):
        parser.error("give one of --sender-id (seed /send) and --topic (native publish)")
    if args.batch and args.topic is None:
        parser.error("--batch needs --topic (batches are a native publish)")
    args.target = Target(args.sender_id, args.topic, args.batch, args.send_path)
    args.watch = {name: parse_watch(w) for name, _, w in (w.partition("=") for w in args.watch)}
    return args


def main() -> None:
    args = parse_args()
    results: list[Result] = []

    async def run() -> None:
        results.append(await run_load(args))

    run_event_loop(run())
    print(json.dumps(asdict(results[0])), flush=True)


if __name__ == "__main__":
    main()
