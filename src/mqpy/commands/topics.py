"""`mqpy topics list|show`: a running broker's topics and their figures (/v1/topics)."""

from __future__ import annotations

import argparse
from typing import Any

from mqpy.commands import EXIT_OK, EXIT_REFUSED, CommandFailed
from mqpy.commands.broker_client import all_pages, ask, expect_object
from mqpy.commands.options import topic_name
from mqpy.commands.parsers import (
    ANSWER_AS_JSON,
    command,
    command_group,
    needs_key,
    talks_to_broker,
)
from mqpy.commands.subscription_view import SUBSCRIPTION_COLUMNS, subscription_row
from mqpy.commands.terminal import (
    format_fields,
    format_table,
    print_answer,
    print_listing,
    rate,
    text,
)

TOPIC_COLUMNS = (
    "TOPIC",
    "PUBLISHED",
    "BACKLOG",
    "OLDEST PUBLISHED",
    "SUBSCRIPTIONS",
    "PUBLISHED/S",
    "DELIVERED/S",
)


def register(subparsers: Any) -> None:
    """Add `topics` and its subcommands to the `mqpy` parser's subparsers."""
    commands = command_group(
        subparsers,
        "topics",
        help="list a running broker's topics, or show one",
        description="The topics of a running broker, with their figures: messages "
        "published, backlog (not yet delivered to every matching subscription), the oldest "
        "of the backlog, matching subscriptions, and publish and delivery rates over the "
        "last minute. " + needs_key("an admin key"),
    )

    listing = command(
        commands,
        "list",
        help="list every topic and its figures",
        description="List every topic (all pages) with its figures, by name.",
    )
    talks_to_broker(
        listing,
        list_topics,
        json_help='print {"topics": [...]} (every page) as JSON instead of a table',
    )

    show = command(
        commands,
        "show",
        help="show one topic's figures and the subscriptions that match it",
        description="Show one topic's figures and the subscriptions (or patterns) that "
        "match it: those its messages are delivered to.",
    )
    show.add_argument("topic", type=topic_name, metavar="TOPIC", help="the topic's name")
    talks_to_broker(show, show_topic, json_help=ANSWER_AS_JSON)


def list_topics(args: argparse.Namespace) -> int:
    topics = ask(args, lambda client: list(all_pages(client.list_topics, "topics")))
    print_listing(
        {"topics": topics},
        as_json=args.json,
        columns=TOPIC_COLUMNS,
        row=lambda topic: _topic_row(expect_object(topic, "topic")),
        empty="no topics yet: a topic exists once something is published to it or subscribes",
    )
    return EXIT_OK


def show_topic(args: argparse.Namespace) -> int:
    topic = ask(args, lambda client: client.get_topic(args.topic))
    print_answer(topic, as_json=args.json, shown=lambda: _topic_shown(topic))
    return EXIT_OK


def _topic_shown(topic: dict[str, Any]) -> str:
    subscriptions = topic.get("subscriptions")
    if not isinstance(subscriptions, list):
        raise CommandFailed(EXIT_REFUSED, f"unexpected answer from the server: {topic!r}")
    fields = format_fields(_topic_fields(topic))
    if not subscriptions:
        return f"{fields}\n\nno subscription matches it: its messages wait for the first one"
    rows = [subscription_row(expect_object(s, "subscription")) for s in subscriptions]
    return f"{fields}\n\n{format_table(SUBSCRIPTION_COLUMNS, rows)}"


def _topic_row(topic: dict[str, Any]) -> tuple[str, ...]:
    return (
        text(topic.get("name")),
        text(topic.get("published")),
        text(topic.get("backlog")),
        text(topic.get("oldest_published_at")),
        text(topic.get("subscriptions")),
        rate(topic.get("publish_rate")),
        rate(topic.get("delivery_rate")),
    )


def _topic_fields(topic: dict[str, Any]) -> list[tuple[str, str]]:
    subscriptions = topic.get("subscriptions")
    return [
        ("topic", text(topic.get("name"))),
        ("published", text(topic.get("published"))),
        ("backlog", text(topic.get("backlog"))),
        ("oldest published", text(topic.get("oldest_published_at"))),
        ("subscriptions", str(len(subscriptions)) if isinstance(subscriptions, list) else "?"),
        ("published/s", rate(topic.get("publish_rate"))),
        ("delivered/s", rate(topic.get("delivery_rate"))),
    ]
