"""`mqpy messages show ID`: one kept message and its journey (GET /v1/messages/{id}):
where each of its deliveries stands and the attempts each one took."""

from __future__ import annotations

import argparse
from typing import Any

from mqpy.commands import EXIT_OK
from mqpy.commands.broker_client import ask
from mqpy.commands.parsers import (
    ANSWER_AS_JSON,
    command,
    command_group,
    needs_key,
    talks_to_broker,
)
from mqpy.commands.terminal import format_fields, format_table, print_answer, shortened, text

ATTEMPT_COLUMNS = ("ATTEMPT", "SENT AT", "TOOK", "OUTCOME", "STATUS", "ERROR")
_BODY_WIDTH = 200
_ERROR_WIDTH = 70


def register(subparsers: Any) -> None:
    """Add `messages` and its subcommands to the `mqpy` parser's subparsers."""
    commands = command_group(
        subparsers,
        "messages",
        help="show a kept message and its journey",
        description="Messages a running broker keeps: undelivered ones, and delivered "
        "ones for --message-retention. "
        + needs_key(
            "a key whose topics allow the message's",
            codes="Exit codes: 0 done, 1 the server refused (or no such message is kept), "
            "2 usage error, 3 server unreachable.",
        ),
    )
    show = command(
        commands,
        "show",
        help="show a message, where each delivery stands and its attempts",
        description="Show a message (topic, attributes, body) and, for each delivery "
        "(one per subscription or group it matched), its state and its attempts: when "
        "each was sent, how long it took, and how it ended (the receiver's HTTP status or "
        "the error). A delivery keeps its newest 20 attempts.",
    )
    show.add_argument("message_id", metavar="ID", help="the message id publishing returned")
    talks_to_broker(show, show_message, json_help=ANSWER_AS_JSON)


def show_message(args: argparse.Namespace) -> int:
    answer = ask(args, lambda client: client.get_message(args.message_id))
    print_answer(answer, as_json=args.json, shown=lambda: _journey(answer))
    return EXIT_OK


def _journey(message: dict[str, Any]) -> str:
    """The message's fields, then each delivery's line and its attempts."""
    blocks = [format_fields(_message_fields(message))]
    deliveries = message["deliveries"]
    if not deliveries:
        blocks.append("no deliveries yet: no subscription matched its topic when it was published")
    for delivery in deliveries:
        history = delivery.get("history") or []
        attempts = (
            _indented(format_table(ATTEMPT_COLUMNS, [_attempt_row(a) for a in history]))
            if history
            else "  not attempted yet"
        )
        blocks.append(f"{_delivery_line(delivery)}\n{attempts}")
    return "\n\n".join(blocks)


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
