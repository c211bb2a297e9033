"""`mqpy publish`: publish a message given on the command line, or read from stdin.

Every message goes to a topic through the native route, POST /v1/topics/{topic}/messages:
one request per message, or with --batch up to 1,000 lines per request.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from mqpy.client import Client, Message, MQError, Published
from mqpy.commands import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    KEY_ENV,
    URL_ENV,
    CommandFailed,
)
from mqpy.commands.attributes import key_values
from mqpy.commands.broker_client import failure, sync_client
from mqpy.commands.options import message_options, topic_name
from mqpy.commands.parsers import command, talks_to_broker
from mqpy.commands.terminal import Progress, printed, visible

DEFAULT_TOPIC = "default"
BATCH_MESSAGES = 1000  # the broker's most per batch request
# Bodies per batch request at most: well under the broker's --max-batch-bytes (16 MiB by
# default), so a batch is refused only for what is in it, never for its size.
BATCH_BYTES = 1 << 20
_READ_BYTES = 1 << 16

_DESCRIPTION = """\
Publish TEXT as one message to a topic. With no TEXT, read stdin: all of it as one
message (one trailing newline removed), or with --lines each line as a message, in
order, or with --batch each line too, up to 1,000 per request.

Prints each message's id once the broker has stored it. A 429 or 503 is retried after
its Retry-After. --attr, --ordering-key, --delay, --deliver-at and --idempotency-key
apply to every message the command publishes.

--lines sends one request per line as the line arrives, and stops at the first line
the broker refuses. --batch sends what has arrived, up to 1,000 lines a request (each
request one transaction): much faster for a file. A line the broker refuses is reported
on stderr with its number; the others are published all the same, and the command
exits 1 at the end.

Exit codes: 0 done, 1 the server refused (a message, or a line of input), 2 usage
error, 3 server unreachable, 130 interrupted."""

_EPILOG = f"""\
examples:
  mqpy publish 'hello'
  mqpy publish --topic orders.eu --attr kind=created --attr region=eu '{{"order": 17}}'
  mqpy publish --topic orders --ordering-key customer-42 'second step'
  mqpy publish --delay 5m 'in five minutes'
  echo hello | mqpy publish
  mqpy publish --lines < events.txt
  mqpy publish --batch --topic events --idempotency-key import-2026-11-26 < events.txt

--idempotency-key K: a repeat within the broker's --dedup-window (24 h) stores nothing
and prints the first message's id. With --lines or --batch, line N gets the key K:N,
so publishing the same input again with the same K publishes no line twice.

environment: {URL_ENV} (the broker's URL), {KEY_ENV} (the API key; publisher or admin)"""


def register(subparsers: Any) -> None:
    """Add `publish` to the `mqpy` parser's subparsers."""
    parser = command(
        subparsers,
        "publish",
        help="publish a message (from the command line or stdin)",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("text", nargs="?", metavar="TEXT", help="the message (default: stdin)")
    parser.add_argument(
        "--topic",
        default=DEFAULT_TOPIC,
        type=topic_name,
        help=f"the topic to publish to: 1-200 of A-Z a-z 0-9 . _ - (default: {DEFAULT_TOPIC})",
    )
    message_options(parser)
    reading = parser.add_mutually_exclusive_group()
    reading.add_argument(
        "--lines",
        action="store_true",
        help="read stdin line by line, publishing each line (empty ones included) as it "
        "arrives; stops at the first line the broker refuses",
    )
    reading.add_argument(
        "--batch",
        action="store_true",
        help="read stdin line by line, publishing up to 1,000 lines per request; reports "
        "each refused line and goes on",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help='print one JSON object per message, {"message_id", "topic", "duplicate"} '
        '(and "line" with --lines or --batch; a refused line: {"line", "error"}), '
        "instead of the bare id",
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress line on stderr with --lines or --batch (it shows only on a "
        "terminal anyway)",
    )
    talks_to_broker(parser, publish, epilog=False)


@dataclass(frozen=True)
class Line:
    """One line of input: its number (from 1), its text, and the bytes it took."""

    number: int
    text: str
    size: int


class Publisher:
    """Publishes to one topic with the command's options, printing what it did."""

    def __init__(
        self, client: Client, args: argparse.Namespace, attributes: dict[str, str] | None
    ) -> None:
        self.client = client
        self.topic: str = args.topic
        self.as_json: bool = args.json
        self.attributes = attributes
        self.ordering_key: str | None = args.ordering_key
        self.delay_seconds: float | None = args.delay
        self.deliver_at: str | None = args.deliver_at
        self.idempotency_key: str | None = args.idempotency_key

    def message(self, text: str, line: int | None = None) -> Message:
        key = self.idempotency_key
        if key is not None and line is not None:
            key = f"{key}:{line}"
        return Message(
            text, self.attributes, self.ordering_key, self.delay_seconds, self.deliver_at, key
        )

    def one(self, text: str, line: int | None = None) -> None:
        message = self.message(text, line)
        published = self.client.publish(
            self.topic,
            message.body,
            attributes=message.attributes,
            ordering_key=message.ordering_key,
            delay_seconds=message.delay_seconds,
            deliver_at=message.deliver_at,
            idempotency_key=message.idempotency_key,
        )
        self.show(published, line)

    def show(self, published: Published, line: int | None) -> None:
        # `printed`: a reader that is gone (`... | head -1`) stops the printing, not the
        # publishing of the rest of the input.
        if not self.as_json:
            printed(published.id)
            return
        record: dict[str, Any] = {} if line is None else {"line": line}
        record |= {
            "message_id": published.id,
            "topic": published.topic,
            "duplicate": published.duplicate,
        }
        printed(json.dumps(record))

    def refused(self, line: int, error: MQError) -> None:
        print(f"mqpy publish: line {line}: {visible(str(error))}", file=sys.stderr, flush=True)
        if self.as_json:
            problem = error.problem or {"status": error.status, "detail": error.detail}
            printed(json.dumps({"line": line, "error": problem}))


def publish(args: argparse.Namespace) -> int:
    if args.text is not None and (args.lines or args.batch):
        option = "--lines" if args.lines else "--batch"
        raise CommandFailed(EXIT_USAGE, f"{option} reads messages from stdin; give no TEXT with it")
    attributes = key_values(args.attr, "--attr")
    client = sync_client(args)
    publisher = Publisher(client, args, attributes)
    from_lines = args.lines or args.batch
    progress = Progress(
        sys.stderr, "messages", _remaining_bytes(sys.stdin.buffer) if from_lines else None
    )
    progress.enabled = progress.enabled and from_lines and not args.no_progress
    try:
        if args.batch:
            return _publish_batches(publisher, sys.stdin.buffer, progress)
        if args.lines:
            _publish_lines(publisher, sys.stdin.buffer, progress)
        else:
            text = args.text if args.text is not None else _read_whole_stdin()
            publisher.one(text)
    except KeyboardInterrupt:
        progress.finish()
        print(f"interrupted; {progress.count} message(s) published", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MQError as error:
        raise failure(error) from None
    finally:
        client.close()
    return EXIT_OK


def _publish_lines(publisher: Publisher, stream: BinaryIO, progress: Progress) -> None:
    try:
        for line in _lines(stream):
            try:
                publisher.one(line.text, line.number)
            except MQError as error:
                refusal = failure(error)
                raise CommandFailed(
                    refusal.exit_code,
                    f"line {line.number}: {refusal} "
                    f"({progress.count} message(s) published before it)",
                ) from None
            progress.advance(nbytes=line.size)
    finally:
        progress.finish()
    if progress.enabled:
        print(f"published {progress.count} message(s)", file=sys.stderr)


def _publish_batches(publisher: Publisher, stream: BinaryIO, progress: Progress) -> int:
    refused = 0
    try:
        for batch in _batches(stream):
            try:
                results = publisher.client.publish_batch(
                    publisher.topic, [publisher.message(line.text, line.number) for line in batch]
                )
            except MQError as error:
                refusal = failure(error)
                raise CommandFailed(
                    refusal.exit_code,
                    f"lines {batch[0].number}-{batch[-1].number}: {refusal} "
                    f"({progress.count} message(s) published before them)",
                ) from None
            for line, result in zip(batch, results, strict=True):
                if isinstance(result, MQError):
                    refused += 1
                    progress.finish()
                    publisher.refused(line.number, result)
                else:
                    publisher.show(result, line.number)
                    progress.advance()
            progress.advance(items=0, nbytes=sum(line.size for line in batch))
    finally:
        progress.finish()
    if refused:
        print(
            f"mqpy publish: published {progress.count} message(s); "
            f"{refused} line(s) refused (see above)",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    if progress.enabled:
        print(f"published {progress.count} message(s)", file=sys.stderr)
    return EXIT_OK


def _lines(stream: BinaryIO) -> Iterator[Line]:
    """Each line without its line ending, as it arrives."""
    for number, raw in enumerate(stream, start=1):
        yield _line(number, raw)


def _batches(stream: BinaryIO) -> Iterator[list[Line]]:
    """Lines in batches of at most BATCH_MESSAGES lines and about BATCH_BYTES bytes.

    A batch is also sent as soon as the input pauses (nothing more to read right now),
    so lines piped in slowly (`tail -f log | mqpy publish --batch`) go out as they come
    rather than waiting for a thousand of them.
    """
    fd = stream.fileno()
    pending: list[Line] = []
    pending_bytes = 0
    buffer = bytearray()
    number = 0
    while True:
        if pending and not _readable_now(fd):
            yield pending
            pending, pending_bytes = [], 0
        chunk = os.read(fd, _READ_BYTES)
        if not chunk:
            break
        buffer += chunk
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            number += 1
            pending.append(_line(number, bytes(buffer[start : end + 1])))
            pending_bytes += end + 1 - start
            start = end + 1
            if len(pending) >= BATCH_MESSAGES or pending_bytes >= BATCH_BYTES:
                yield pending
                pending, pending_bytes = [], 0
        del buffer[:start]
    if buffer:
        pending.append(_line(number + 1, bytes(buffer)))
    if pending:
        yield pending


def _line(number: int, raw: bytes) -> Line:
    text = _decoded(raw.removesuffix(b"\n").removesuffix(b"\r"), f"line {number}")
    return Line(number, text, len(raw))


def _readable_now(fd: int) -> bool:
    try:
        readable, _, _ = select.select([fd], [], [], 0)
    except (OSError, ValueError):
        return True  # not selectable: read (and block) as a plain file would
    return bool(readable)


def _read_whole_stdin() -> str:
    if sys.stdin.isatty():
        print("reading the message from stdin; end it with Ctrl-D", file=sys.stderr)
    raw = sys.stdin.buffer.read()
    return _decoded(raw.removesuffix(b"\n").removesuffix(b"\r"), "stdin")


def _decoded(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CommandFailed(
            EXIT_USAGE, f"{where} is not UTF-8 text ({error.reason} at byte {error.start})"
        ) from None


def _remaining_bytes(stream: BinaryIO) -> int | None:
    """The input's size when it is a file (`< events.txt`), for the progress bar."""
    try:
        info = os.fstat(stream.fileno())
        if not stat.S_ISREG(info.st_mode):
            return None
        return max(info.st_size - stream.tell(), 0)
    except (OSError, ValueError):
        return None
