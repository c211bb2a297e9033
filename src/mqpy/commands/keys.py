"""`mqpy keys create|list|revoke`: manage API keys on a running broker (/v1/keys)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mqpy.commands import EXIT_OK
from mqpy.commands.broker_client import ask, expect_object
from mqpy.commands.parsers import command, command_group, needs_key, talks_to_broker
from mqpy.commands.terminal import format_table, print_answer, utc_time
from mqpy.model.domain import Role

_COLUMNS = ("ID", "ROLE", "TOPICS", "CREATED")
# How a key limited to no topic pattern shows in the table: it may use every topic.
_EVERY_TOPIC = "(any)"


def register(subparsers: Any) -> None:
    """Add `keys` and its subcommands to the `mqpy` parser's subparsers."""
    commands = command_group(
        subparsers,
        "keys",
        help="create, list and revoke API keys on a running broker",
        description="Manage the API keys of a running broker through its HTTP API. "
        + needs_key("an admin key"),
    )

    create = command(
        commands,
        "create",
        help="create a key and print it (it is shown this once)",
        description="Create an API key. The key is printed once, on stdout; the server "
        "keeps only a hash of it.",
    )
    create.add_argument(
        "--role",
        required=True,
        choices=[role.value for role in Role],
        help="publisher: connect as a sender and send; subscriber: connect as a receiver; "
        "admin: everything",
    )
    create.add_argument(
        "--topic",
        dest="topics",
        action="append",
        default=[],
        metavar="PATTERN",
        help="limit the key to topics matching PATTERN (orders, orders.*, orders.>); "
        "repeat for several; none means every topic",
    )
    talks_to_broker(
        create,
        create_key,
        json_help="print the server's whole answer as JSON (the key included)",
    )

    listing = command(
        commands,
        "list",
        help="list the valid keys (never the keys themselves)",
        description="List the valid keys: id, role, topics, creation time (UTC). The "
        "bootstrap admin key from MQPY_ADMIN_KEY is not stored, so it is not listed.",
    )
    talks_to_broker(
        listing, list_keys, json_help="print the server's answer as JSON instead of a table"
    )

    revoke = command(
        commands,
        "revoke",
        help="revoke a key by its id",
        description="Revoke a key: its next request is refused with 401.",
    )
    revoke.add_argument("id", help="the key's id, as `mqpy keys list` shows it")
    talks_to_broker(revoke, revoke_key)


def create_key(args: argparse.Namespace) -> int:
    answer = ask(args, lambda client: client.create_key(args.role, args.topics))
    print_answer(answer, as_json=args.json, shown=lambda: str(answer["key"]))
    print(
        f"created key {answer.get('id')} ({answer.get('role')}, topics "
        f"{_topics(answer.get('topics'))}); it is shown only this once, store it now",
        file=sys.stderr,
    )
    if answer.get("authentication_turned_on"):
        print(_turned_on(answer.get("role")), file=sys.stderr)
    return EXIT_OK


def _turned_on(role: object) -> str:
    """What the first key on a keyless server changes, for everyone using it."""
    warning = (
        "authentication is now ON: this server had no key, and from now on every "
        "request needs 'Authorization: Bearer <key>'; senders and receivers already "
        "connected get 401 until they send a key"
    )
    if role != Role.ADMIN.value:
        warning += (
            f"; this is a {role} key and no admin key exists, so no more keys can be "
            "created: to manage keys, restart the server with MQPY_ADMIN_KEY set"
        )
    return warning


def list_keys(args: argparse.Namespace) -> int:
    answer = ask(args, lambda client: client.list_keys())
    print_answer(
        answer,
        as_json=args.json,
        shown=lambda: format_table(_COLUMNS, [_row(key) for key in answer["keys"]]),
    )
    return EXIT_OK


def revoke_key(args: argparse.Namespace) -> int:
    ask(args, lambda client: client.revoke_key(args.id))
    print(f"revoked key {args.id}")
    return EXIT_OK


def _row(value: Any) -> tuple[str, str, str, str]:
    key = expect_object(value, "key")
    return (
        str(key.get("id", "?")),
        str(key.get("role", "?")),
        _topics(key.get("topics")),
        utc_time(key.get("created_at")),
    )


def _topics(topics: Any) -> str:
    if not topics:
        return _EVERY_TOPIC
    return ",".join(str(topic) for topic in topics)
