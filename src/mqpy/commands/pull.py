"""`mqpy subscriptions pull ID`: take messages of a pull subscription from anywhere the
broker's URL reaches, print them, and ack them once printed."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from mqpy.client import MQError, PulledMessage
from mqpy.commands import EXIT_OK, add_server_options_with_epilog, set_handler
from mqpy.commands.broker_client import failure, sync_client
from mqpy.commands.terminal import visible

MAX_MESSAGES = 1000
MAX_WAIT_SECONDS = 30.0


def register(commands: Any, add_id: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add `pull` to the `subscriptions` subcommands."""
    pull = commands.add_parser(
        "pull",
        help="take messages of a pull subscription, print them and ack them",
        description="Pull messages of a pull subscription (one made with --pull), print "
        "each (its body, or a JSON object per line with --json) and ack them once printed. "
        "Waits up to --wait seconds for a first message; with --follow it keeps pulling "
        "until interrupted. Messages left unacked (--no-ack, or a reader that went away) "
        "come again after the subscription's ack deadline.",
        allow_abbrev=False,
    )
    add_id(pull)
    pull.add_argument(
        "--max",
        type=_bounded(int, 1, MAX_MESSAGES),
        default=100,
        metavar="N",
        help=f"messages per pull, 1-{MAX_MESSAGES} (default: 100)",
    )
    pull.add_argument(
        "--wait",
        type=_bounded(float, 0, MAX_WAIT_SECONDS),
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for a first message when none is due, 0-30 (default: 10)",
    )
    pull.add_argument(
        "--follow", action="store_true", help="keep pulling until interrupted (Ctrl-C)"
    )
    pull.add_argument(
        "--no-ack",
        action="store_true",
        help="leave the messages leased, not acked: they come again after the deadline; "
        "--json shows their ack ids for POST .../ack",
    )
    pull.add_argument(
        "--json",
        action="store_true",
        help="print each message as pulled (ack_id, message_id, topic, body, attributes, "
        "ordering_key, published_at, attempt), one JSON object per line",
    )
    add_server_options_with_epilog(pull)
    set_handler(pull, pull_messages)


def pull_messages(args: argparse.Namespace) -> int:
    with sync_client(args) as client:
        try:
            while True:
                messages = client.pull(args.id, max_messages=args.max, wait_seconds=args.wait)
                printed = _print(messages, as_json=args.json)
                if printed and not args.no_ack:
                    client.ack(args.id, printed)
                if len(printed) < len(messages):
                    return EXIT_OK  # the reader went away: the rest come again
                if not args.follow:
                    return EXIT_OK
        except MQError as error:
            raise failure(error) from None
        except KeyboardInterrupt:
            return EXIT_OK


def _print(messages: list[PulledMessage], *, as_json: bool) -> list[PulledMessage]:
    """The messages printed, in order; fewer when the reader of our output went away."""
    printed = []
    for message in messages:
        shown = json.dumps(vars(message), ensure_ascii=False) if as_json else message.body
        line = shown if as_json else visible(shown)
        try:
            print(line, flush=True)
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            break
        printed.append(message)
    return printed


def _bounded(kind: Callable[[str], Any], low: float, high: float) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r}: give {low:g} to {high:g}")
        return value

    return parse
