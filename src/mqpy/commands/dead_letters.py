"""`mqpy dead-letters list|redrive|drop`: inspect, requeue and drop deliveries that ran
out of attempts: all of them, one receiver's, or one receiver's dead letter of one message."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from mqpy.client import Client, DeadLetter, MQError, NotFound
from mqpy.client.calls import AdminAnswer
from mqpy.commands import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    KEY_ENV,
    CommandFailed,
    add_server_options_with_epilog,
    print_json,
    print_usage,
    set_handler,
)
from mqpy.commands.broker_client import ask, failure, sync_client
from mqpy.commands.terminal import format_table, visible

_COLUMNS = ("MESSAGE ID", "RECEIVER", "ATTEMPTS", "DEAD AT", "LAST ERROR", "BODY")
_BODY_WIDTH = 40
_ERROR_WIDTH = 60


def register(subparsers: Any) -> None:
    """Add `dead-letters` and its subcommands to the `mqpy` parser's subparsers."""
    group = subparsers.add_parser(
        "dead-letters",
        help="list and redrive dead letters on a running broker",
        description="Deliveries that failed --max-attempts times (or outlived --max-age) "
        f"wait as dead letters until redriven. Needs an admin key (--key or {KEY_ENV}) "
        "unless the server has none configured. Exit codes: 0 done, 1 the server refused, "
        "2 usage error, 3 server unreachable.",
        allow_abbrev=False,
    )
    group.set_defaults(run=lambda args: print_usage(group))
    commands = group.add_subparsers(dest="dead_letters_command", metavar="COMMAND")

    listing = commands.add_parser(
        "list",
        help="list dead letters, oldest first",
        description="List dead letters, oldest first (at most 1000): message id, receiver, "
        "attempts, when it died (UTC), the last error, and the start of the body.",
        allow_abbrev=False,
    )
    listing.add_argument(
        "--json", action="store_true", help="print them as JSON, bodies in full, not a table"
    )
    add_server_options_with_epilog(listing)
    set_handler(listing, list_dead_letters)

    redrive = commands.add_parser(
        "redrive",
        help="queue dead letters for delivery again",
        description="Queue dead letters again: all of them, one receiver's (--receiver), or "
        "one message's dead letter for one receiver (MESSAGE_ID --receiver ID). Each gets a "
        "fresh attempt budget and is due at once.",
        allow_abbrev=False,
    )
    redrive.add_argument(
        "message_id",
        nargs="?",
        metavar="MESSAGE_ID",
        help="only this message's dead letter (needs --receiver: the list shows both)",
    )
    redrive.add_argument(
        "--receiver",
        type=int,
        metavar="ID",
        help="only this receiver's dead letters (its connection id, as the list shows)",
    )
    redrive.add_argument(
        "--json", action="store_true", help='print {"redriven": N} instead of a sentence'
    )
    add_server_options_with_epilog(redrive)
    set_handler(redrive, redrive_dead_letters)

    drop = commands.add_parser(
        "drop",
        help="drop one dead letter for good",
        description="Drop one receiver's dead letter of one message for good: it will not "
        "be delivered to that receiver. (DELETE /v1/dead-letters drops them all.)",
        allow_abbrev=False,
    )
    drop.add_argument("message_id", metavar="MESSAGE_ID", help="the message id, as listed")
    drop.add_argument(
        "--receiver",
        type=int,
        metavar="ID",
        required=True,
        help="the receiver whose dead letter it is (as the list shows)",
    )
    drop.add_argument(
        "--json", action="store_true", help='print {"purged": 1} instead of a sentence'
    )
    add_server_options_with_epilog(drop)
    set_handler(drop, drop_dead_letter)


def list_dead_letters(args: argparse.Namespace) -> int:
    with sync_client(args) as client:
        try:
            letters = client.dead_letters()
        except MQError as error:
            raise failure(error) from None
    if args.json:
        print_json({"dead_letters": [dataclasses.asdict(letter) for letter in letters]})
    else:
        print(format_table(_COLUMNS, [_row(letter) for letter in letters]))
    return EXIT_OK


def redrive_dead_letters(args: argparse.Namespace) -> int:
    if args.message_id is not None:
        return _one_dead_letter(args, Client.redrive_dead_letter, "queued for delivery again")
    with sync_client(args) as client:
        try:
            count = client.redrive(args.receiver)
        except NotFound:
            raise CommandFailed(
                EXIT_REFUSED,
                f"there is no receiver with id {args.receiver} (`mqpy subscriptions list` "
                "shows the receivers' ids)",
            ) from None
        except MQError as error:
            raise failure(error) from None
    if args.json:
        print(json.dumps({"redriven": count}))
    else:
        whose = "" if args.receiver is None else f" of receiver {args.receiver}"
        print(f"redriven: {count} dead letter(s){whose} queued for delivery again")
    return EXIT_OK


def drop_dead_letter(args: argparse.Namespace) -> int:
    return _one_dead_letter(args, Client.drop_dead_letter, "dropped")


def _one_dead_letter(
    args: argparse.Namespace,
    act: Callable[[Client, int, str], AdminAnswer | None],
    done: str,
) -> int:
    if args.receiver is None:
        raise CommandFailed(
            EXIT_USAGE,
            f"give --receiver with the message id {args.message_id}: a message has a dead "
            "letter per receiver (`mqpy dead-letters list` shows both)",
        )
    answer = ask(args, lambda client: act(client, args.receiver, args.message_id))
    if args.json:
        print(json.dumps(answer))
    else:
        print(f"{done}: the dead letter of {args.message_id} for receiver {args.receiver}")
    return EXIT_OK


def _row(letter: DeadLetter) -> tuple[str, ...]:
    return (
        letter.message_id,
        str(letter.receiver_id),
        str(letter.attempts),
        datetime.fromtimestamp(letter.dead_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        _shortened(letter.last_error, _ERROR_WIDTH),
        _shortened(letter.body, _BODY_WIDTH),
    )


def _shortened(text: str, width: int) -> str:
    shown = visible(text)
    return shown if len(shown) <= width else shown[: width - 1] + "…"
