"""A fast receiver for the benchmark: answers every delivery 204 and counts it.

It runs in its own process so it does not share the broker's event loop. It is an
`asyncio.Protocol` that parses HTTP/1.1 just far enough to find where each request
ends (the header block and Content-Length), so a delivery costs it a few
microseconds. For each delivery it records, per path, the arrival and the
`webhook-id` (so duplicates can be told apart), and, when the delivered body is
`t<nanoseconds>` (a send time on the shared monotonic clock), the send-to-delivery
latency: mq-py delivers the body as `{"body": "t..."}`, MQ Go (under `--compare`) as the
bare text.

The runner talks to it over the same port:

- `GET /_stats`: counts and first/last arrival times, as JSON;
- `GET /_latencies`: every recorded latency in nanoseconds, as a JSON list
  (`/_latencies?path=/r0`: that path's only);
- `GET /_ids?path=/r0&since=N`: that path's distinct webhook-ids from the N-th on;
- `POST /_pause`: hold deliveries unanswered until `POST /_resume` (the broker's
  workers then wait, and its backlog stays in the store);
- `POST /_resume`: answer every held delivery now and stop holding;
- `POST /_reset`: forget everything recorded.

Deliveries to a path starting `/flaky` meet a receiver that fails 60% of them, as
issue 10 describes one: in equal shares 500, 503 and 429 answers, hangs (never
answered; the broker's delivery timeout gives up) and dropped connections. The rest are
answered 204 and recorded. The draws come from a seeded generator, so every run of the
sink meets the same sequence; `_stats` counts each kind under `flaky`. A path starting
`/chaos` draws the same way, but its 503 and 429 answers carry `Retry-After: 1` (the
torture suite's chaotic receiver). A path starting `/slow` answers each delivery
`SLOW_SECONDS` after it arrived; `_stats` says how many it holds now (`slow_held`).

For the torture suite, which checks every acknowledged message arrived, the sink also
keeps, per path, each distinct `webhook-id` in order of first arrival, and counts the
repeats that came with an `mq-attempt` the id already came with (`same_attempt_repeats`:
one attempt handed out twice, rather than a retry, which counts one higher).

    python -m bench.sink [--port 0] [--max-seconds 900]

prints `listening <port>` on stdout once it accepts connections, and exits on SIGTERM,
SIGINT, or after `--max-seconds`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import time
from collections.abc import Coroutine
from typing import Any, cast

NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"
CLOSE_WITH_ERROR = b"HTTP/1.1 411 Length Required\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
HEADER_END = b"\r\n\r\n"
CONTENT_LENGTH = b"\r\ncontent-length:"
WEBHOOK_ID = b"\r\nwebhook-id:"
BODY_KEY = b'"body":"'
CONTROL_PREFIX = b"/_"
FLAKY_PREFIX = b"/flaky"
CHAOS_PREFIX = b"/chaos"
SLOW_PREFIX = b"/slow"
SLOW_SECONDS = 0.05
MQ_ATTEMPT = b"\r\nmq-attempt:"
FLAKY_FAILURES = (b"500", b"503", b"429", b"hang", b"drop")
FLAKY_SUCCESS_SHARE = 0.4
LATENCY_MARK = ord("t")
# A request head larger than this is not a delivery; the connection is dropped.
MAX_HEAD_BYTES = 64 * 1024


class Recorder:
    """Everything the sink has seen since the last reset."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.by_path: dict[bytes, int] = {}
        # (path, webhook-id) -> the mq-attempt it first came with; per path, the ids in
        # order of first arrival; for ids that came again, every attempt number seen.
        self.seen: dict[tuple[bytes, bytes], int] = {}
        self.repeated: dict[tuple[bytes, bytes], set[int]] = {}
        self.ids: dict[bytes, list[str]] = {}
        self.same_attempt_repeats = 0
        self.latencies_ns: dict[bytes, list[int]] = {}
        self.slow_held = 0
        self.first_ns = 0
        self.last_ns = 0
        self.bad_requests = 0
        self.paused = False
        self.held: list[tuple[asyncio.Transport, bytes, bytes, bytes]] = []
        self.flaky: dict[bytes, int] = {}
        self.hanging = 0  # flaky deliveries left unanswered until the broker gives up
        self.most_hanging = 0
        self._chance = random.Random(10)

    def flaky_outcome(self) -> bytes:
        """What the flaky receiver does with the next delivery: b"ok" or a failure."""
        if self._chance.random() < FLAKY_SUCCESS_SHARE:
            outcome = b"ok"
        else:
            outcome = self._chance.choice(FLAKY_FAILURES)
        self.flaky[outcome] = self.flaky.get(outcome, 0) + 1
        if outcome == b"hang":
            self.hanging += 1
            self.most_hanging = max(self.most_hanging, self.hanging)
        return outcome

    def arrive(self, now_ns: int, path: bytes, head: bytes, body: bytes) -> None:
        """Record one delivery that is being answered now."""
        self.count += 1
        self.by_path[path] = self.by_path.get(path, 0) + 1
        if self.first_ns == 0:
            self.first_ns = now_ns
        self.last_ns = now_ns
        message_id = _header(head, WEBHOOK_ID)
        if message_id is not None:
            self._note_id(path, message_id, _header(head, MQ_ATTEMPT))
        start = body.find(BODY_KEY)
        if start >= 0:
            start += len(BODY_KEY)
            end = body.find(b'"', start)
        else:
            start, end = 0, len(body)  # a bare text body, as MQ Go sends it
        if start < len(body) and body[start] == LATENCY_MARK:
            try:
                sent_ns = int(body[start + 1 : end])
            except ValueError:
                return
            self.latencies_ns.setdefault(path, []).append(now_ns - sent_ns)

    def _note_id(self, path: bytes, message_id: bytes, attempt_text: bytes | None) -> None:
        attempt = int(attempt_text) if attempt_text and attempt_text.isdigit() else 0
        key = (path, message_id)
        first = self.seen.get(key)
        if first is None:
            self.seen[key] = attempt
            self.ids.setdefault(path, []).append(message_id.decode())
            return
        attempts = self.repeated.setdefault(key, {first})
        if attempt in attempts:
            self.same_attempt_repeats += 1
        attempts.add(attempt)

    def all_latencies(self) -> list[int]:
        return [latency for latencies in self.latencies_ns.values() for latency in latencies]

    def stats(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "distinct": len(self.seen),
            "by_path": {path.decode(): n for path, n in sorted(self.by_path.items())},
            "distinct_by_path": {path.decode(): len(ids) for path, ids in self.ids.items()},
            "same_attempt_repeats": self.same_attempt_repeats,
            "slow_held": self.slow_held,
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
            "held": len(self.held),
            "paused": self.paused,
            "bad_requests": self.bad_requests,
            "latencies": sum(len(latencies) for latencies in self.latencies_ns.values()),
            "flaky": {kind.decode(): n for kind, n in sorted(self.flaky.items())},
            "most_hanging": self.most_hanging,
        }

    def resume(self) -> None:
        """Answer every held delivery now; their arrival is counted as of now."""
        self.paused = False
        held, self.held = self.held, []
        now_ns = time.monotonic_ns()
        for transport, path, head, body in held:
            self.arrive(now_ns, path, head, body)
            if not transport.is_closing():
                transport.write(NO_CONTENT)


class SinkProtocol(asyncio.Protocol):
    """One keep-alive connection: requests in, 204s out."""

    def __init__(self, recorder: Recorder, stop: asyncio.Event) -> None:
        self._recorder = recorder
        self._stop = stop
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._hanging = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._hanging:
            self._recorder.hanging -= 1

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while self._transport is not None:
            head_end = buffer.find(HEADER_END)
            if head_end < 0:
                if len(buffer) > MAX_HEAD_BYTES:
                    self._refuse()
                return
            head = bytes(buffer[:head_end]).lower()
            length = _content_length(head)
            if length is None:
                self._refuse()
                return
            end = head_end + 4 + length
            if len(buffer) < end:
                return
            body = bytes(buffer[head_end + 4 : end])
            del buffer[:end]
            self._handle(head, body)

    def _handle(self, head: bytes, body: bytes) -> None:
        assert self._transport is not None
        first_line_end = head.find(b"\r\n")
        request_line = head[: first_line_end if first_line_end >= 0 else len(head)]
        parts = request_line.split(b" ")
        path = parts[1] if len(parts) > 1 else b"/"
        if path.startswith(CONTROL_PREFIX):
            self._transport.write(self._control(parts[0], path))
            return
        recorder = self._recorder
        if path.startswith((FLAKY_PREFIX, CHAOS_PREFIX)):
            outcome = recorder.flaky_outcome()
            if outcome == b"hang":
                self._hanging = True  # the broker gives up after its timeout and closes
                return
            if outcome == b"drop":
                self._transport.close()
                self._transport = None
                return
            if outcome != b"ok":
                pause = b"Retry-After: 1\r\n" if path.startswith(CHAOS_PREFIX) else b""
                if outcome == b"500":
                    pause = b""
                self._transport.write(
                    b"HTTP/1.1 %s Failing\r\n%sContent-Length: 0\r\n\r\n" % (outcome, pause)
                )
                return
        if recorder.paused:
            recorder.held.append((self._transport, path, head, body))
            return
        if path.startswith(SLOW_PREFIX):
            recorder.slow_held += 1
            asyncio.get_running_loop().call_later(
                SLOW_SECONDS, self._answer_slow, self._transport, path, head, body
            )
            return
        recorder.arrive(time.monotonic_ns(), path, head, body)
        self._transport.write(NO_CONTENT)

    def _answer_slow(
        self, transport: asyncio.Transport, path: bytes, head: bytes, body: bytes
    ) -> None:
        self._recorder.slow_held -= 1
        if transport.is_closing():
            return  # the broker gave up on it (or stopped): not acknowledged
        self._recorder.arrive(time.monotonic_ns(), path, head, body)
        transport.write(NO_CONTENT)

    def _control(self, method: bytes, target: bytes) -> bytes:
        recorder = self._recorder
        payload: Any = {"ok": True}
        path, _, query = target.partition(b"?")
        params = dict(pair.partition(b"=")[::2] for pair in query.split(b"&") if pair)
        if path == b"/_stats":
            payload = recorder.stats()
        elif path == b"/_latencies":
            wanted = params.get(b"path")
            payload = (
                recorder.all_latencies()
                if wanted is None
                else recorder.latencies_ns.get(wanted, [])
            )
        elif path == b"/_ids":
            since = int(params.get(b"since", b"0") or 0)
            payload = recorder.ids.get(params.get(b"path", b"/"), [])[since:]
        elif path == b"/_pause" and method == b"post":
            recorder.paused = True
        elif path == b"/_resume" and method == b"post":
            recorder.resume()
        elif path == b"/_reset" and method == b"post":
            recorder.resume()
            recorder.reset()
        elif path == b"/_quit" and method == b"post":
            self._stop.set()
        else:
            return b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
        data = json.dumps(payload).encode()
        return (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(data), data)
        )

    def _refuse(self) -> None:
        # No Content-Length (chunked bodies are not expected from the broker) or a
        # runaway head: say so and drop the connection rather than guess.
        assert self._transport is not None
        self._recorder.bad_requests += 1
        self._transport.write(CLOSE_WITH_ERROR)
        self._transport.close()
        self._transport = None


def _header(head: bytes, name: bytes) -> bytes | None:
    """The value of header `name` (given as b"\\r\\nname:") in a lower-cased head."""
    start = head.find(name)
    if start < 0:
        return None
    start += len(name)
    end = head.find(b"\r\n", start)
    return head[start : end if end >= 0 else len(head)].strip()


def _content_length(head: bytes) -> int | None:
    """The Content-Length of a lower-cased request head; 0 if absent and not chunked."""
    start = head.find(CONTENT_LENGTH)
    if start < 0:
        return None if b"transfer-encoding:" in head else 0
    start += len(CONTENT_LENGTH)
    end = head.find(b"\r\n", start)
    try:
        return int(head[start : end if end >= 0 else len(head)])
    except ValueError:
        return None


async def serve(port: int, max_seconds: float) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    recorder = Recorder()
    server = await loop.create_server(
        lambda: SinkProtocol(recorder, stop), "127.0.0.1", port, backlog=1024
    )
    bound = server.sockets[0].getsockname()[1]
    print(f"listening {bound}", flush=True)
    try:
        await asyncio.wait_for(stop.wait(), max_seconds)
    except TimeoutError:
        print(f"sink: stopping after --max-seconds {max_seconds:g}", file=sys.stderr)
    server.close()


def run_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` on uvloop where it is installed, else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


def main() -> None:
    parser = argparse.ArgumentParser(description="A fast benchmark receiver (answers 204).")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free)")
    parser.add_argument(
        "--max-seconds", type=float, default=900.0, help="exit after this long at the latest"
    )
    args = parser.parse_args()
    run_event_loop(serve(args.port, args.max_seconds))


if __name__ == "__main__":
    main()
