"""`mqpy subscriptions create`: a push subscription (a URL the broker POSTs to) or a
pull one (--pull), with its topic or pattern, group, filter, limits and signing secret."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mqpy.commands import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, KEY_ENV, URL_ENV, CommandFailed
from mqpy.commands.attributes import FILTER_HELP, filter_of
from mqpy.commands.broker_client import ask
from mqpy.commands.options import (
    at_least_a_second,
    per_second,
    positive_int,
    receiving_options,
    start_at,
)
from mqpy.commands.parsers import EXIT_CODES, command, talks_to_broker
from mqpy.commands.terminal import print_answer, text


def register(commands: Any) -> None:
    """Add `create` to the `subscriptions` subcommands."""
    create = command(
        commands,
        "create",
        help="create a push subscription; prints its id and signing secret (shown once)",
        description="Create a push subscription: the broker POSTs the messages of --topic\n"
        "to URL until the subscription is deleted. Prints its id and its signing secret,\n"
        "which is shown only this once: receivers check deliveries' signatures with it.\n"
        + EXIT_CODES,
        epilog=f"{FILTER_HELP}\n\nEnvironment: {URL_ENV} (the broker's URL), {KEY_ENV} (the "
        "API key; a subscriber or admin key).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    create.add_argument(
        "receiver_url",
        metavar="URL",
        nargs="?",
        help="where messages are POSTed (http or https); none with --pull",
    )
    create.add_argument(
        "--pull",
        action="store_true",
        help="a pull subscription: consumers take its messages with `mqpy subscriptions "
        "pull ID` or POST /v1/subscriptions/ID/pull instead of having them POSTed",
    )
    create.add_argument(
        "--ack-deadline",
        type=positive_int,
        metavar="SECONDS",
        help="with --pull: how long a pulled message stays leased before it comes again "
        "unless acked (1-600; default: 30)",
    )
    receiving_options(create)
    create.add_argument(
        "--max-attempts",
        type=positive_int,
        metavar="N",
        help="attempts before a message becomes a dead letter (1-100; default: the "
        "broker's --max-attempts)",
    )
    create.add_argument(
        "--max-concurrency",
        type=positive_int,
        metavar="N",
        help="deliveries in flight at once to it (1-1000; default: the broker's "
        "--receiver-concurrency)",
    )
    create.add_argument(
        "--max-per-second",
        type=per_second,
        metavar="R",
        help="deliveries started per second, such as 50 or 0.5 (at most 100000; default: no limit)",
    )
    create.add_argument(
        "--format",
        choices=("mq", "cloudevents-binary", "cloudevents-structured"),
        help='how deliveries are laid out: mq ({"body": ...}, the default), or a '
        "CloudEvents 1.0 event in binary mode (ce-* headers, the body as it is) or "
        "structured mode (application/cloudevents+json); push only",
    )
    create.add_argument(
        "--disable-after",
        type=at_least_a_second,
        metavar="DURATION",
        help="disable it once every attempt failed for this long, such as 30m or 24h "
        "(push only; default: the broker's --disable-after, 72h); its messages then wait "
        "until `mqpy subscriptions resume ID`",
    )
    create.add_argument(
        "--secret",
        help="sign its deliveries with this secret (whsec_ and base64, as the broker makes "
        "them; python -c 'import mqpy.wire.signing as s; print(s.generate_secret())' makes "
        "one), so the receiver can have it before the first delivery (default: a new one; "
        "a flag shows in `ps`)",
    )
    create.add_argument(
        "--paused",
        action="store_true",
        help="create it paused: its messages wait until `mqpy subscriptions resume ID`",
    )
    create.add_argument(
        "--start-at",
        type=start_at,
        metavar="WHEN",
        help="new: what is published from now on; earliest: every retained message too; "
        "a time (2026-11-26T23:00:00Z) or a duration meaning that long ago (1h): the "
        "retained messages published since then too (default: new). A member joining a "
        "group that exists takes the group's place instead",
    )
    talks_to_broker(
        create,
        create_subscription,
        json_help="print the server's whole answer as JSON (the secret included)",
        epilog=False,
    )


def create_subscription(args: argparse.Namespace) -> int:
    body = _kind_fields(args)
    conditions = filter_of(args.filter)
    for field, value in (
        ("topic", args.topic),
        ("group", args.group),
        ("filter", conditions),
        ("max_concurrency", args.max_concurrency),
        ("max_per_second", args.max_per_second),
        ("format", args.format),
        ("disable_after_seconds", args.disable_after),
    ):
        if value is not None:
            body[field] = value
    if args.max_attempts is not None:
        body["retry_policy"] = {"max_attempts": args.max_attempts}
    if args.secret is not None:
        body["secret"] = args.secret
    if args.paused:
        body["paused"] = True
    if args.start_at is not None:
        body["start_at"] = args.start_at
    answer = ask(args, lambda client: client.subscribe(body))
    if args.pull:
        print_answer(answer, as_json=args.json, shown=lambda: f"id      {text(answer.get('id'))}")
        print(
            f"created pull subscription {text(answer.get('id'))} on "
            f"{text(answer.get('topic'))}; take its messages with `mqpy subscriptions pull "
            f"{text(answer.get('id'))}`",
            file=sys.stderr,
        )
        return EXIT_OK
    if not isinstance(answer.get("secret"), str):
        raise CommandFailed(EXIT_REFUSED, f"unexpected answer from the server: {answer!r}")
    print_answer(
        answer,
        as_json=args.json,
        shown=lambda: f"id      {text(answer.get('id'))}\nsecret  {text(answer['secret'])}",
    )
    print(_created_note(answer, chosen_secret=args.secret is not None), file=sys.stderr)
    return EXIT_OK


def _created_note(answer: dict[str, Any], *, chosen_secret: bool) -> str:
    """What to do next, on stderr: store the secret, and resume a paused one."""
    sid = text(answer.get("id"))
    note = f"created subscription {sid} on {text(answer.get('topic'))}; "
    if chosen_secret:
        note += "its deliveries are signed with the secret you gave"
    else:
        note += "its signing secret is shown only this once, store it now"
    if answer.get("paused"):
        note += f"; it is paused: resume it with `mqpy subscriptions resume {sid}`"
    return note


def _kind_fields(args: argparse.Namespace) -> dict[str, Any]:
    """A push subscription's URL, or a pull subscription's kind and deadline."""
    if not args.pull:
        if args.receiver_url is None or args.ack_deadline is not None:
            raise CommandFailed(
                EXIT_USAGE,
                "give the URL messages are POSTed to, or --pull for a pull subscription "
                "(--ack-deadline goes with --pull)",
            )
        return {"url": args.receiver_url}
    if args.receiver_url is not None:
        raise CommandFailed(EXIT_USAGE, "a pull subscription takes no URL; leave it out")
    if args.format is not None:
        raise CommandFailed(
            EXIT_USAGE, "--format lays out what the broker POSTs; a pull subscription has none"
        )
    body: dict[str, Any] = {"kind": "pull"}
    if args.ack_deadline is not None:
        body["ack_deadline_seconds"] = args.ack_deadline
    return body
