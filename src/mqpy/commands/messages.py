"""`mqpy messages show ID`: one kept message and its journey (GET /v1/messages/{id}):
where each of its deliveries stands and the attempts each one took."""

from __future__ import annotations

import argparse
from typing import Any

from mqpy.commands import (
    EXIT_OK,
    KEY_ENV,
    add_server_options_with_epilog,
    print_json,
    print_usage,
    set_handler,
)
from mqpy.commands.broker_client import ask
from mqpy.commands.terminal import format_table
from mqpy.commands.topics import format_fields, shortened, text

ATTEMPT_COLUMNS = ("ATTEMPT", "SENT AT", "TOOK", "OUTCOME", "STATUS", "ERROR")
_BODY_WIDTH = 200
_ERROR_WIDTH = 70


def register(subparsers: Any) -> None:
    """Add `messages` and its subcommands to the `mqpy` parser's subparsers."""
    group = subparsers.add_parser(
        "messages",
        help="show a kept message and its journey",
        description="Messages a running broker keeps: undelivered ones, and delivered "
        "ones for --message-retention. Needs a key whose topics allow the message's "
        f"(--key or {KEY_ENV}) unless the server has none configured. Exit codes: 0 done, "
        "1 the server refused (or no such message is kept), 2 usage error, 3 server "
        "unreachable.",
        allow_abbrev=False,
    )
    group.set_defaults(run=lambda args: print_usage(group))
    commands = group.add_subparsers(dest="messages_command", metavar="COMMAND")
    show = commands.add_parser(
        "show",
        help="show a message, where each delivery stands and its attempts",
        description="Show a message (topic, attributes, body) and, for each delivery "
        "(one per subscription or group it matched), its state and its attempts: when "
        "each was sent, how long it took, and how it ended (the receiver's HTTP status or "
        "the error). A delivery keeps its newest 20 attempts.",
        allow_abbrev=False,
    )
    show.add_argument("message_id", metavar="ID", help="the message id publishing returned")
    show.add_argument(
        "--json", action="store_true", help="print the server's answer as JSON instead"
    )
    add_server_options_with_epilog(show)
    set_handler(show, show_message)


def show_message(args: argparse.Namespace) -> int:
    answer = ask(args, lambda client: client.get_message(args.message_id))
    if args.json:
        print_json(answer)
        return EXIT_OK
    print(format_fields(_message_fields(answer)))
    deliveries = answer["deliveries"]
    if not deliveries:
        print("\nno deliveries yet: no subscription matched its topic when it was published")
    for delivery in deliveries:
        print()
        print(_delivery_line(delivery))
        history = delivery.get("history") or []
        if history:
            rows = [_attempt_row(attempt) for attempt in history]
            print(_indented(format_table(ATTEMPT_COLUMNS, rows)))
        else:
            print("  not attempted yet")
    return EXIT_OK


def _message_fields(message: dict[str, Any]) -> list[tuple[str, str]]:
    attributes = message.get("attributes") or {}
    return [
        ("message", text(message.get("id"))),
        ("topic", text(message.get("topic"))),
        ("published", text(message.get("published_at"))),
        ("deliver at", text(message.get("deliver_at"))),
        ("ordering key", text(message.get("ordering_key"))),
        ("attributes", " ".join(f"{k}={v}" for k, v in attributes.items()) or "-"),
        ("body", shortened(text(message.get("body")), _BODY_WIDTH)),
    ]


def _delivery_line(delivery: dict[str, Any]) -> str:
    group = delivery.get("group")
    member = delivery.get("subscription_id")
    if group is not None:
        who = f"group {text(group)}" + (f" (member {member})" if member is not None else "")
    else:
        who = f"subscription {text(member)}"
    line = f"to {who}: {text(delivery.get('state'))}, {text(delivery.get('attempts'))} attempt(s)"
    if delivery.get("delivered_at"):
        line += f", delivered at {text(delivery['delivered_at'])}"
    if delivery.get("next_attempt_at"):
        line += f", next attempt at {text(delivery['next_attempt_at'])}"
    return line


def _attempt_row(attempt: dict[str, Any]) -> tuple[str, ...]:
    duration = attempt.get("duration_ms")
    return (
        text(attempt.get("attempt")),
        text(attempt.get("sent_at")),
        f"{duration:.1f} ms" if isinstance(duration, int | float) else "-",
        text(attempt.get("outcome")),
        text(attempt.get("status")),
        shortened(text(attempt.get("error")), _ERROR_WIDTH),
    )


def _indented(block: str) -> str:
    return "\n".join("  " + line for line in block.splitlines())
