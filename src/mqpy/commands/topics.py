"""`mqpy topics list|show`: a running broker's topics and their figures (/v1/topics)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from typing import Any

from mqpy.client.calls import AdminAnswer
from mqpy.commands import (
    EXIT_OK,
    EXIT_REFUSED,
    KEY_ENV,
    CommandFailed,
    add_server_options_with_epilog,
    print_json,
    print_usage,
    set_handler,
)
from mqpy.commands.broker_client import ask
from mqpy.commands.options import topic_name
from mqpy.commands.terminal import format_table, visible

TOPIC_COLUMNS = (
    "TOPIC",
    "PUBLISHED",
    "BACKLOG",
    "OLDEST PUBLISHED",
    "SUBSCRIPTIONS",
    "PUBLISHED/S",
    "DELIVERED/S",
)
SUBSCRIPTION_COLUMNS = ("ID", "KIND", "URL", "TOPIC", "GROUP", "FILTER", "STATE", "FORMAT")
PAGE_SIZE = 1000  # the broker's largest page
_URL_WIDTH = 50
_FILTER_WIDTH = 40


def register(subparsers: Any) -> None:
    """Add `topics` and its subcommands to the `mqpy` parser's subparsers."""
    topics = subparsers.add_parser(
        "topics",
        help="list a running broker's topics, or show one",
        description="The topics of a running broker, with their figures: messages "
        "published, backlog (not yet delivered to every matching subscription), the oldest "
        "of the backlog, matching subscriptions, and publish and delivery rates over the "
        f"last minute. Needs an admin key (--key or {KEY_ENV}) unless the server has none "
        "configured. Exit codes: 0 done, 1 the server refused, 2 usage error, 3 server "
        "unreachable.",
        allow_abbrev=False,
    )
    topics.set_defaults(run=lambda args: print_usage(topics))
    commands = topics.add_subparsers(dest="topics_command", metavar="COMMAND")

    listing = commands.add_parser(
        "list",
        help="list every topic and its figures",
        description="List every topic (all pages) with its figures, by name.",
        allow_abbrev=False,
    )
    listing.add_argument(
        "--json",
        action="store_true",
        help='print {"topics": [...]} (every page) as JSON instead of a table',
    )
    add_server_options_with_epilog(listing)
    set_handler(listing, list_topics)

    show = commands.add_parser(
        "show",
        help="show one topic's figures and the subscriptions that match it",
        description="Show one topic's figures and the subscriptions (or patterns) that "
        "match it: those its messages are delivered to.",
        allow_abbrev=False,
    )
    show.add_argument("topic", type=topic_name, metavar="TOPIC", help="the topic's name")
    show.add_argument(
        "--json", action="store_true", help="print the server's answer as JSON instead"
    )
    add_server_options_with_epilog(show)
    set_handler(show, show_topic)


def list_topics(args: argparse.Namespace) -> int:
    topics = ask(args, lambda client: list(all_pages(client.list_topics, "topics")))
    if args.json:
        print_json({"topics": topics})
    elif topics:
        print(format_table(TOPIC_COLUMNS, [_topic_row(_object(t, "topic")) for t in topics]))
    else:
        print("no topics yet: a topic exists once something is published to it or subscribes")
    return EXIT_OK


def show_topic(args: argparse.Namespace) -> int:
    topic = ask(args, lambda client: client.get_topic(args.topic))
    if args.json:
        print_json(topic)
        return EXIT_OK
    subscriptions = topic.get("subscriptions")
    if not isinstance(subscriptions, list):
        raise CommandFailed(EXIT_REFUSED, f"unexpected answer from the server: {topic!r}")
    print(format_fields(_topic_fields(topic)))
    print()
    if subscriptions:
        rows = [subscription_row(_object(s, "subscription")) for s in subscriptions]
        print(format_table(SUBSCRIPTION_COLUMNS, rows))
    else:
        print("no subscription matches it: its messages wait for the first one")
    return EXIT_OK


def all_pages(page: Callable[..., AdminAnswer], member: str) -> Iterator[Any]:
    """Every item of a paged list (`page` is a client method such as `list_topics`),
    following next_cursor to the last page."""
    cursor: str | None = None
    while True:
        answer = page(limit=PAGE_SIZE, cursor=cursor)
        yield from answer[member]
        following = answer.get("next_cursor")
        if not isinstance(following, str) or following == cursor:
            return
        cursor = following


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CommandFailed(EXIT_REFUSED, f"unexpected {what} from the server: {value!r}")
    return value


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


def subscription_row(subscription: dict[str, Any]) -> tuple[str, ...]:
    """A subscription as a row of SUBSCRIPTION_COLUMNS, server text escaped."""
    return (
        text(subscription.get("id")),
        text(subscription.get("kind")),
        shortened(text(subscription.get("url")), _URL_WIDTH),
        text(subscription.get("topic")),
        text(subscription.get("group")),
        shortened(filter_text(subscription.get("filter")), _FILTER_WIDTH),
        subscription_state(subscription),
        text(subscription.get("format")),
    )


def subscription_state(subscription: dict[str, Any]) -> str:
    """active, paused or disabled (a server from before `state` says only `paused`)."""
    state = subscription.get("state")
    if state is None:
        return "paused" if subscription.get("paused") else "active"
    return text(state)


def filter_text(conditions: Any) -> str:
    """A filter much as --filter spells it, one name's values joined by commas:
    `kind=created,paid region^=eu- test !draft`."""
    if not conditions:
        return "-"
    if not isinstance(conditions, dict):
        return visible(str(conditions))
    parts: list[str] = []
    for name, condition in conditions.items():
        if isinstance(condition, str):
            parts.append(f"{name}={condition}")
        elif isinstance(condition, list):
            parts.append(f"{name}=" + ",".join(str(value) for value in condition))
        elif isinstance(condition, dict) and "prefix" in condition:
            parts.append(f"{name}^={condition['prefix']}")
        elif isinstance(condition, dict) and "exists" in condition:
            parts.append(name if condition["exists"] else f"!{name}")
        else:
            parts.append(f"{name}:{condition}")
    return visible(" ".join(parts))


def text(value: Any) -> str:
    """A value from the server on one line, control characters escaped; `-` for none."""
    if value is None:
        return "-"
    return visible(str(value))


def rate(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, int | float) else "?"


def shortened(shown: str, width: int) -> str:
    return shown if len(shown) <= width else shown[: width - 1] + "…"


def format_fields(fields: list[tuple[str, str]]) -> str:
    """`name   value` lines, values aligned."""
    width = max(len(name) for name, _ in fields)
    return "\n".join(f"{name.ljust(width)}  {value}".rstrip() for name, value in fields)
