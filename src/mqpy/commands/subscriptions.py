"""`mqpy subscriptions list|create|show|pause|resume|seek|delete|pull`: push and pull
subscriptions on a running broker (/v1/subscriptions)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

from mqpy.client import Client
from mqpy.client.calls import AdminAnswer
from mqpy.commands import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, KEY_ENV, URL_ENV, CommandFailed
from mqpy.commands import pull as pull_command
from mqpy.commands.attributes import FILTER_HELP, filter_of
from mqpy.commands.broker_client import all_pages, ask, expect_object
from mqpy.commands.options import (
    add_subscription_id,
    at_least_a_second,
    per_second,
    point_in_time,
    positive_int,
    receiving_options,
    start_at,
    topic_name,
)
from mqpy.commands.parsers import (
    ANSWER_AS_JSON,
    EXIT_CODES,
    command,
    command_group,
    needs_key,
    talks_to_broker,
)
from mqpy.commands.subscription_view import (
    SUBSCRIPTION_COLUMNS,
    subscription_fields,
    subscription_row,
)
from mqpy.commands.terminal import format_fields, print_answer, print_json, print_listing, text


def register(subparsers: Any) -> None:
    """Add `subscriptions` and its subcommands to the `mqpy` parser's subparsers."""
    commands = command_group(
        subparsers,
        "subscriptions",
        help="create, list, show, pause, resume, seek, delete and pull subscriptions",
        description="Manage the subscriptions of a running broker: push ones (URLs it "
        "POSTs a topic's messages to) and pull ones (whose consumers ask). "
        + needs_key("a subscriber key (which sees only its own subscriptions) or an admin key"),
    )

    listing = command(
        commands,
        "list",
        help="list subscriptions (all pages)",
        description="List the subscriptions (all pages): id, kind (push, pull, or seed for "
        "a /connect receiver), URL, topic or pattern, group, filter, state (active, paused, "
        "or disabled by the broker for failing too long), and a push subscription's "
        "delivery format.",
    )
    listing.add_argument(
        "--topic",
        type=topic_name,
        metavar="TOPIC",
        help="only those a message published to TOPIC would reach (their topic or pattern "
        "matches it)",
    )
    talks_to_broker(
        listing,
        list_subscriptions,
        json_help='print {"subscriptions": [...]} (every page) as JSON instead',
    )

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
        "them; python -c 'import mqpy.signing as s; print(s.generate_secret())' makes "
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

    show = command(
        commands,
        "show",
        help="show one subscription",
        description="Show one subscription: its URL, topic, group, filter, retry policy, "
        "limits and whether it is paused.",
    )
    add_subscription_id(show)
    talks_to_broker(show, show_subscription, json_help=ANSWER_AS_JSON)

    for action, summary, handler in (
        ("pause", "deliver nothing to it; its messages wait", pause_subscription),
        ("resume", "deliver to it again (paused, or disabled for failing)", resume_subscription),
    ):
        parser = command(
            commands,
            action,
            help=f"{action} a subscription: {summary}",
            description=f"{action.capitalize()} a subscription: {summary}. In a group, "
            "the other members take the group's messages while one is paused.",
        )
        add_subscription_id(parser)
        talks_to_broker(
            parser, handler, json_help="print the subscription as JSON instead of a sentence"
        )

    seek = command(
        commands,
        "seek",
        help="replay or skip: make what was published since a time due again",
        description="Move a subscription to a time: every retained message of its topic "
        "published at or after it (and passing its filter) is delivered again, from "
        "attempt 1 and in publish order, and what it has not yet acknowledged from before "
        "that time is acknowledged. A time after now acknowledges everything pending. "
        "Seeking a group member moves the whole group. Messages older than the broker's "
        "--message-retention are gone and cannot be replayed.",
    )
    add_subscription_id(seek)
    seek.add_argument(
        "--time",
        type=point_in_time,
        required=True,
        metavar="WHEN",
        help="a time with an offset (2026-11-26T23:00:00Z), or a duration meaning that "
        "long ago (90s, 15m, 1h, 2d)",
    )
    talks_to_broker(seek, seek_subscription, json_help=ANSWER_AS_JSON)

    delete = command(
        commands,
        "delete",
        help="delete a subscription",
        description="Delete a subscription: its undelivered messages are dropped for it (a "
        "group's stay with the other members). Deleting a seed receiver disconnects it.",
    )
    add_subscription_id(delete)
    talks_to_broker(delete, delete_subscription)

    pull_command.register(commands)


def list_subscriptions(args: argparse.Namespace) -> int:
    subscriptions = ask(
        args,
        lambda client: list(
            all_pages(partial(client.list_subscriptions, topic=args.topic), "subscriptions")
        ),
    )
    print_listing(
        {"subscriptions": subscriptions},
        as_json=args.json,
        columns=SUBSCRIPTION_COLUMNS,
        row=lambda subscription: subscription_row(expect_object(subscription)),
        empty="no subscriptions" + ("" if args.topic is None else f" match {args.topic}"),
    )
    return EXIT_OK


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


def show_subscription(args: argparse.Namespace) -> int:
    answer = ask(args, lambda client: client.get_subscription(args.id))
    print_answer(
        answer, as_json=args.json, shown=lambda: format_fields(subscription_fields(answer))
    )
    return EXIT_OK


def pause_subscription(args: argparse.Namespace) -> int:
    return _switch(
        args, Client.pause_subscription, "paused: nothing is delivered to it until it is resumed"
    )


def resume_subscription(args: argparse.Namespace) -> int:
    return _switch(
        args,
        Client.resume_subscription,
        "resumed (paused or disabled before): its messages are delivered again",
    )


def _switch(
    args: argparse.Namespace, action: Callable[[Client, int], AdminAnswer], done: str
) -> int:
    answer = ask(args, lambda client: action(client, args.id))
    print_answer(answer, as_json=args.json, shown=lambda: f"subscription {args.id} {done}")
    return EXIT_OK


def seek_subscription(args: argparse.Namespace) -> int:
    sought = ask(args, lambda client: client.seek(args.id, args.time))
    if args.json:
        # In the order the broker answers them.
        fields = ("id", "time", "due", "acked", "in_flight")
        print_json({field: getattr(sought, field) for field in fields})
        return EXIT_OK
    line = (
        f"subscription {args.id} moved to {text(sought.time)}: "
        f"{sought.due} message(s) due again, {sought.acked} acknowledged"
    )
    if sought.in_flight:
        line += f", {sought.in_flight} in flight left to finish"
    print(line)
    return EXIT_OK


def delete_subscription(args: argparse.Namespace) -> int:
    ask(args, lambda client: client.delete_subscription(args.id))
    print(f"deleted subscription {args.id}")
    return EXIT_OK
