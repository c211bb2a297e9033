"""`mqpy dead-letters list|redrive|drop`: inspect, requeue and drop deliveries that ran
out of attempts: all of them, one receiver's, or one receiver's dead letter of one message."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from typing import Any

from mqpy.client import Client, DeadLetter, NotFound
from mqpy.client.calls import AdminAnswer
from mqpy.commands import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, CommandFailed
from mqpy.commands.broker_client import ask
from mqpy.commands.parsers import command, command_group, needs_key, talks_to_broker
from mqpy.commands.terminal import format_table, print_answer, shortened, utc_time

_COLUMNS = ("MESSAGE ID", "RECEIVER", "ATTEMPTS", "DEAD AT", "LAST ERROR", "BODY")
_BODY_WIDTH = 40
_ERROR_WIDTH = 60


def register(subparsers: Any) -> None:
    """Add `dead-letters` and its subcommands to the `mqpy` parser's subparsers."""
    commands = command_group(
        subparsers,
        "dead-letters",
        help="list and redrive dead letters on a running broker",
        description="Deliveries that failed --max-attempts times (or outlived --max-age) "
        "wait as dead letters until redriven. " + needs_key("an admin key"),
    )

    listing = command(
        commands,
        "list",
        help="list dead letters, oldest first",
        description="List dead letters, oldest first (at most 1000): message id, receiver, "
        "attempts, when it died (UTC), the last error, and the start of the body.",
    )
    talks_to_broker(
        listing, list_dead_letters, json_help="print them as JSON, bodies in full, not a table"
    )

    redrive = command(
        commands,
        "redrive",
        help="queue dead letters for delivery again",
        description="Queue dead letters again: all of them, one receiver's (--receiver), or "
        "one message's dead letter for one receiver (MESSAGE_ID --receiver ID). Each gets a "
        "fresh attempt budget and is due at once.",
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
    talks_to_broker(
        redrive, redrive_dead_letters, json_help='print {"redriven": N} instead of a sentence'
    )

    drop = command(
        commands,
        "drop",
        help="drop one dead letter for good",
        description="Drop one receiver's dead letter of one message for good: it will not "
        "be delivered to that receiver. (DELETE /v1/dead-letters drops them all.)",
    )
    drop.add_argument("message_id", metavar="MESSAGE_ID", help="the message id, as listed")
    drop.add_argument(
        "--receiver",
        type=int,
        metavar="ID",
        required=True,
        help="the receiver whose dead letter it is (as the list shows)",
    )
    talks_to_broker(drop, drop_dead_letter, json_help='print {"purged": 1} instead of a sentence')


def list_dead_letters(args: argparse.Namespace) -> int:
    letters = ask(args, lambda client: client.dead_letters())
    print_answer(
        {"dead_letters": [dataclasses.asdict(letter) for letter in letters]},
        as_json=args.json,
        shown=lambda: format_table(_COLUMNS, [_row(letter) for letter in letters]),
    )
    return EXIT_OK


def redrive_dead_letters(args: argparse.Namespace) -> int:
    if args.message_id is not None:
        return _one_dead_letter(args, Client.redrive_dead_letter, "queued for delivery again")
    count = ask(args, lambda client: _redrive(client, args.receiver))
    if args.json:
        print(json.dumps({"redriven": count}))
    else:
        whose = "" if args.receiver is None else f" of receiver {args.receiver}"
        print(f"redriven: {count} dead letter(s){whose} queued for delivery again")
    return EXIT_OK


def _redrive(client: Client, receiver: int | None) -> int:
    try:
        return client.redrive(receiver)
    except NotFound:
        raise CommandFailed(
            EXIT_REFUSED,
            f"there is no receiver with id {receiver} (`mqpy subscriptions list` "
            "shows the receivers' ids)",
        ) from None


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
        utc_time(letter.dead_at),
        shortened(letter.last_error, _ERROR_WIDTH),
        shortened(letter.body, _BODY_WIDTH),
    )
