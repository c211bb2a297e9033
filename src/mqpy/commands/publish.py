"""`mqpy publish`: publish a message given on the command line, or read from stdin."""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from collections.abc import Iterator
from typing import Any, BinaryIO

from mqpy.client import Client, MQError
from mqpy.commands import (
    EXIT_OK,
    EXIT_USAGE,
    KEY_ENV,
    URL_ENV,
    CommandFailed,
    add_server_options,
    set_handler,
)
from mqpy.commands.broker_client import failure, sync_client
from mqpy.commands.terminal import Progress

EXIT_INTERRUPTED = 130  # the shell's code for a command ended by Ctrl-C

_DESCRIPTION = """\
Publish TEXT as one message. With no TEXT, read stdin: all of it as one message
(one trailing newline removed), or with --lines each line as a message, in order.

Prints each message's id once the broker has stored it. Connects a sender for the
run and disconnects it at the end. A 429 or 503 is retried after its Retry-After.

Exit codes: 0 done, 1 the server refused, 2 usage error, 3 server unreachable."""

_EPILOG = f"""\
examples:
  mqpy publish 'hello'
  echo hello | mqpy publish
  mqpy publish --lines < events.txt

environment: {URL_ENV} (the broker's URL), {KEY_ENV} (the API key)"""


def register(subparsers: Any) -> None:
    """Add `publish` to the `mqpy` parser's subparsers."""
    parser = subparsers.add_parser(
        "publish",
        help="publish a message (from the command line or stdin)",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("text", nargs="?", metavar="TEXT", help="the message (default: stdin)")
    parser.add_argument(
        "--lines",
        action="store_true",
        help="read stdin line by line, publishing each line (empty ones included) as it "
        "arrives; stops at the first line the broker refuses",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help='print one JSON object per message, {"message_id": ...}, instead of the bare id',
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress line on stderr with --lines (it shows only on a terminal anyway)",
    )
    add_server_options(parser)
    set_handler(parser, publish)


def publish(args: argparse.Namespace) -> int:
    if args.text is not None and args.lines:
        raise CommandFailed(EXIT_USAGE, "--lines reads messages from stdin; give no TEXT with it")
    client = sync_client(args)
    published = 0
    try:
        if args.lines:
            published = _publish_lines(client, sys.stdin.buffer, args)
        else:
            text = args.text if args.text is not None else _read_whole_stdin()
            _print_id(client.publish(text), args.json)
            published = 1
    except KeyboardInterrupt:
        print(f"interrupted; {published} message(s) published", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MQError as error:
        raise failure(error) from None
    finally:
        client.close()
    return EXIT_OK


def _publish_lines(client: Client, stream: BinaryIO, args: argparse.Namespace) -> int:
    progress = Progress(sys.stderr, "messages", _remaining_bytes(stream))
    progress.enabled = progress.enabled and not args.no_progress
    try:
        for number, (text, size) in enumerate(_lines(stream), start=1):
            try:
                message_id = client.publish(text)
            except MQError as error:
                refusal = failure(error)
                raise CommandFailed(
                    refusal.exit_code,
                    f"line {number}: {refusal} ({progress.count} message(s) published before it)",
                ) from None
            _print_id(message_id, args.json)
            progress.advance(nbytes=size)
    finally:
        progress.finish()
    if progress.enabled:
        print(f"published {progress.count} message(s)", file=sys.stderr)
    return progress.count


def _lines(stream: BinaryIO) -> Iterator[tuple[str, int]]:
    """Each line without its line ending, and the bytes it took in the input."""
    for number, raw in enumerate(stream, start=1):
        yield _decoded(raw.removesuffix(b"\n").removesuffix(b"\r"), f"line {number}"), len(raw)


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


def _print_id(message_id: str, as_json: bool) -> None:
    line = json.dumps({"message_id": message_id}) if as_json else message_id
    print(line, flush=True)
