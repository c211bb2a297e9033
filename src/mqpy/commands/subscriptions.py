"""`mqpy subscriptions list|create|show|pause|resume|seek|delete|pull`: push and pull
subscriptions on a running broker (/v1/subscriptions)."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

from mqpy.client import Client
from mqpy.client.calls import AdminAnswer
from mqpy.commands import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    KEY_ENV,
    URL_ENV,
    CommandFailed,
    add_server_options,
    add_server_options_with_epilog,
    print_json,
    print_usage,
    set_handler,
)
from mqpy.commands import pull as pull_command
from mqpy.commands.broker_client import ask
from mqpy.commands.options import (
    filter_of,
    group_name,
    point_in_time,
    start_at,
    topic_name,
    topic_pattern,
)
from mqpy.commands.terminal import format_table
from mqpy.commands.topics import (
    SUBSCRIPTION_COLUMNS,
    all_pages,
    filter_text,
    format_fields,
    subscription_row,
    subscription_state,
    text,
)
from mqpy.config import parse_duration

_FILTER_HELP = """\
--filter NAME=VALUE: the attribute equals VALUE (repeat for any of several values);
NAME^=PREFIX: it starts with PREFIX; NAME: the message has it; !NAME: it has not.
Nothing else parses: kind==x, kind!=x or n>3 is refused.
Members of one group must give the same filter."""


def register(subparsers: Any) -> None:
    """Add `subscriptions` and its subcommands to the `mqpy` parser's subparsers."""
    group = subparsers.add_parser(
        "subscriptions",
        help="create, list, show, pause, resume, seek, delete and pull subscriptions",
        description="Manage the subscriptions of a running broker: push ones (URLs it "
        "POSTs a topic's messages to) and pull ones (whose consumers ask). Needs a "
        "subscriber key (which sees only its own subscriptions) or an admin key "
        f"(--key or {KEY_ENV}) unless the server has none configured. Exit codes: 0 "
        "done, 1 the server refused, 2 usage error, 3 server unreachable.",
        allow_abbrev=False,
    )
    group.set_defaults(run=lambda args: print_usage(group))
    commands = group.add_subparsers(dest="subscriptions_command", metavar="COMMAND")

    listing = commands.add_parser(
        "list",
        help="list subscriptions (all pages)",
        description="List the subscriptions (all pages): id, kind (push, pull, or seed for "
        "a /connect receiver), URL, topic or pattern, group, filter, state (active, paused, "
        "or disabled by the broker for failing too long), and a push subscription's "
        "delivery format.",
        allow_abbrev=False,
    )
    listing.add_argument(
        "--topic",
        type=topic_name,
        metavar="TOPIC",
        help="only those a message published to TOPIC would reach (their topic or pattern "
        "matches it)",
    )
    listing.add_argument(
        "--json",
        action="store_true",
        help='print {"subscriptions": [...]} (every page) as JSON instead',
    )
    add_server_options_with_epilog(listing)
    set_handler(listing, list_subscriptions)

    create = commands.add_parser(
        "create",
        help="create a push subscription; prints its id and signing secret (shown once)",
        description="Create a push subscription: the broker POSTs the messages of --topic\n"
        "to URL until the subscription is deleted. Prints its id and its signing secret,\n"
        "which is shown only this once: receivers check deliveries' signatures with it.\n"
        "Exit codes: 0 done, 1 the server refused, 2 usage error, 3 server unreachable.",
        epilog=f"{_FILTER_HELP}\n\nEnvironment: {URL_ENV} (the broker's URL), {KEY_ENV} (the "
        "API key; a subscriber or admin key).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
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
        type=_positive_int,
        metavar="SECONDS",
        help="with --pull: how long a pulled message stays leased before it comes again "
        "unless acked (1-600; default: 30)",
    )
    create.add_argument(
        "--topic",
        type=topic_pattern,
        help="the topic to receive, or a pattern: orders.* (one more segment), orders.> "
        "(any number) (default: the broker's, 'default')",
    )
    create.add_argument(
        "--group",
        type=group_name,
        help="join this consumer group: each message goes to one of its members",
    )
    create.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="CONDITION",
        help="receive only messages whose attributes match (all conditions must hold); see below",
    )
    create.add_argument(
        "--max-attempts",
        type=_positive_int,
        metavar="N",
        help="attempts before a message becomes a dead letter (1-100; default: the "
        "broker's --max-attempts)",
    )
    create.add_argument(
        "--max-concurrency",
        type=_positive_int,
        metavar="N",
        help="deliveries in flight at once to it (1-1000; default: the broker's "
        "--receiver-concurrency)",
    )
    create.add_argument(
        "--max-per-second",
        type=_positive_rate,
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
        type=_duration,
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
    create.add_argument(
        "--json",
        action="store_true",
        help="print the server's whole answer as JSON (the secret included)",
    )
    add_server_options(create)
    set_handler(create, create_subscription)

    show = commands.add_parser(
        "show",
        help="show one subscription",
        description="Show one subscription: its URL, topic, group, filter, retry policy, "
        "limits and whether it is paused.",
        allow_abbrev=False,
    )
    _add_id(show)
    show.add_argument(
        "--json", action="store_true", help="print the server's answer as JSON instead"
    )
    add_server_options_with_epilog(show)
    set_handler(show, show_subscription)

    for action, summary, handler in (
        ("pause", "deliver nothing to it; its messages wait", pause_subscription),
        ("resume", "deliver to it again (paused, or disabled for failing)", resume_subscription),
    ):
        parser = commands.add_parser(
            action,
            help=f"{action} a subscription: {summary}",
            description=f"{action.capitalize()} a subscription: {summary}. In a group, "
            "the other members take the group's messages while one is paused.",
            allow_abbrev=False,
        )
        _add_id(parser)
        parser.add_argument(
            "--json",
            action="store_true",
            help="print the subscription as JSON instead of a sentence",
        )
        add_server_options_with_epilog(parser)
        set_handler(parser, handler)

    seek = commands.add_parser(
        "seek",
        help="replay or skip: make what was published since a time due again",
        description="Move a subscription to a time: every retained message of its topic "
        "published at or after it (and passing its filter) is delivered again, from "
        "attempt 1 and in publish order, and what it has not yet acknowledged from before "
        "that time is acknowledged. A time after now acknowledges everything pending. "
        "Seeking a group member moves the whole group. Messages older than the broker's "
        "--message-retention are gone and cannot be replayed.",
        allow_abbrev=False,
    )
    _add_id(seek)
    seek.add_argument(
        "--time",
        type=point_in_time,
        required=True,
        metavar="WHEN",
        help="a time with an offset (2026-11-26T23:00:00Z), or a duration meaning that "
        "long ago (90s, 15m, 1h, 2d)",
    )
    seek.add_argument(
        "--json", action="store_true", help="print the server's answer as JSON instead"
    )
    add_server_options_with_epilog(seek)
    set_handler(seek, seek_subscription)

    delete = commands.add_parser(
        "delete",
        help="delete a subscription",
        description="Delete a subscription: its undelivered messages are dropped for it (a "
        "group's stay with the other members). Deleting a seed receiver disconnects it.",
        allow_abbrev=False,
    )
    _add_id(delete)
    add_server_options_with_epilog(delete)
    set_handler(delete, delete_subscription)

    pull_command.register(commands, _add_id)


def _add_id(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "id", type=_subscription_id, metavar="ID", help="the subscription's id, as listed"
    )


def _subscription_id(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a subscription id: a whole number, as `mqpy subscriptions "
            "list` shows it"
        )
    return int(text)


def _positive_int(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give 1 or more")
    return number


def _positive_rate(text: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of deliveries per second, such as 50 or 0.5"
        ) from None
    if not math.isfinite(number) or number <= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give a number of deliveries per second above 0, such as 50 or 0.5"
        )
    return number


def list_subscriptions(args: argparse.Namespace) -> int:
    subscriptions = ask(
        args,
        lambda client: list(
            all_pages(partial(client.list_subscriptions, topic=args.topic), "subscriptions")
        ),
    )
    if args.json:
        print_json({"subscriptions": subscriptions})
    elif subscriptions:
        rows = [subscription_row(_object(s)) for s in subscriptions]
        print(format_table(SUBSCRIPTION_COLUMNS, rows))
    else:
        print("no subscriptions" + ("" if args.topic is None else f" match {args.topic}"))
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
        if args.json:
            print_json(answer)
        else:
            print(f"id      {text(answer.get('id'))}")
        print(
            f"created pull subscription {text(answer.get('id'))} on "
            f"{text(answer.get('topic'))}; take its messages with `mqpy subscriptions pull "
            f"{text(answer.get('id'))}`",
            file=sys.stderr,
        )
        return EXIT_OK
    if not isinstance(answer.get("secret"), str):
        raise CommandFailed(EXIT_REFUSED, f"unexpected answer from the server: {answer!r}")
    if args.json:
        print_json(answer)
    else:
        print(f"id      {text(answer.get('id'))}")
        print(f"secret  {text(answer['secret'])}")
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
    if args.json:
        print_json(answer)
    else:
        print(format_fields(subscription_fields(answer)))
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
    if args.json:
        print_json(answer)
    else:
        print(f"subscription {args.id} {done}")
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


def subscription_fields(subscription: dict[str, Any]) -> list[tuple[str, str]]:
    """A subscription as `name value` lines, server text escaped."""
    policy = subscription.get("retry_policy")
    policy = policy if isinstance(policy, dict) else {}
    broker = "(the broker's)"

    def setting(value: Any, default: str = broker) -> str:
        return default if value is None else text(value)

    return [
        ("id", text(subscription.get("id"))),
        ("kind", text(subscription.get("kind"))),
        ("url", text(subscription.get("url"))),
        ("topic", text(subscription.get("topic"))),
        ("group", text(subscription.get("group"))),
        ("filter", filter_text(subscription.get("filter"))),
        ("state", subscription_state(subscription)),
        ("failing since", setting(subscription.get("failing_since"), "-")),
        ("disabled at", setting(subscription.get("disabled_at"), "-")),
        ("disabled because", setting(subscription.get("disabled_reason"), "-")),
        ("disable after seconds", setting(subscription.get("disable_after_seconds"))),
        ("format", text(subscription.get("format"))),
        ("ack deadline seconds", text(subscription.get("ack_deadline_seconds"))),
        ("max attempts", setting(policy.get("max_attempts"))),
        ("min backoff seconds", setting(policy.get("min_backoff_seconds"))),
        ("max backoff seconds", setting(policy.get("max_backoff_seconds"))),
        ("max age seconds", setting(policy.get("max_age_seconds"))),
        ("max concurrency", setting(subscription.get("max_concurrency"))),
        ("max per second", setting(subscription.get("max_per_second"), "(no limit)")),
        ("created at", text(subscription.get("created_at"))),
        ("connection id", text(subscription.get("connection_id"))),
    ]


def _object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CommandFailed(EXIT_REFUSED, f"unexpected answer from the server: {value!r}")
    return value


def _duration(raw: str) -> float:
    try:
        seconds = parse_duration(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds < 1:
        raise argparse.ArgumentTypeError(f"{raw!r} is under a second; give 1s or more")
    return seconds
