"""`mqpy subscriptions pull ID`: take messages of a pull subscription from anywhere the
broker's URL reaches, print them, and ack them once printed."""

from __future__ import annotations

import argparse
import json
from typing import Any

from mqpy.client import Client, PulledMessage
from mqpy.commands import EXIT_OK
from mqpy.commands.broker_client import ask
from mqpy.commands.options import add_subscription_id, bounded
from mqpy.commands.parsers import command, talks_to_broker
from mqpy.commands.terminal import printed, visible

MAX_MESSAGES = 1000
MAX_WAIT_SECONDS = 30.0


def register(commands: Any) -> None:
    """Add `pull` to the `subscriptions` subcommands."""
    pull = command(
        commands,
        "pull",
        help="take messages of a pull subscription, print them and ack them",
        description="Pull messages of a pull subscription (one made with --pull), print "
        "each (its body, or a JSON object per line with --json) and ack them once printed. "
        "Waits up to --wait seconds for a first message; with --follow it keeps pulling "
        "until interrupted. Messages left unacked (--no-ack, or a reader that went away) "
        "come again after the subscription's ack deadline.",
    )
    add_subscription_id(pull)
    pull.add_argument(
        "--max",
        type=bounded(int, 1, MAX_MESSAGES),
        default=100,
        metavar="N",
        help=f"messages per pull, 1-{MAX_MESSAGES} (default: 100)",
    )
    pull.add_argument(
        "--wait",
        type=bounded(float, 0, MAX_WAIT_SECONDS),
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
    talks_to_broker(
        pull,
        pull_messages,
        json_help="print each message as pulled (ack_id, message_id, topic, body, attributes, "
        "ordering_key, published_at, attempt), one JSON object per line",
    )


def pull_messages(args: argparse.Namespace) -> int:
    try:
        return ask(args, lambda client: _pull(client, args))
    except KeyboardInterrupt:
        return EXIT_OK


def _pull(client: Client, args: argparse.Namespace) -> int:
    while True:
        messages = client.pull(args.id, max_messages=args.max, wait_seconds=args.wait)
        shown = _print(messages, as_json=args.json)
        if shown and not args.no_ack:
            client.ack(args.id, shown)
        if len(shown) < len(messages):
            return EXIT_OK  # the reader went away: the rest come again
        if not args.follow:
            return EXIT_OK


def _print(messages: list[PulledMessage], *, as_json: bool) -> list[PulledMessage]:
    """The messages printed, in order; fewer when the reader of our output went away."""
    shown = []
    for message in messages:
        line = json.dumps(vars(message), ensure_ascii=False) if as_json else visible(message.body)
        if not printed(line):
            break
        shown.append(message)
    return shown
