"""`mqpy subscriptions list|create|show|pause|resume|seek|delete|pull`: push and pull
subscriptions on a running broker (/v1/subscriptions)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial
from typing import Any

from mqpy.client import Client
from mqpy.client.calls import AdminAnswer
from mqpy.commands import EXIT_OK, subscription_create
from mqpy.commands import pull as pull_command
from mqpy.commands.broker_client import all_pages, ask, expect_object
from mqpy.commands.options import add_subscription_id, point_in_time, topic_name
from mqpy.commands.parsers import (
    ANSWER_AS_JSON,
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

    subscription_create.register(commands)

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
