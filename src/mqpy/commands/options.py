"""Command-line spellings of the broker's message and subscription fields: topics,
groups, attributes (`--attr k=v`), filters (`--filter k=v`) and delays, checked here so
a typo is a usage error (exit 2) before anything is sent."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from mqpy.commands import EXIT_USAGE, CommandFailed
from mqpy.config import parse_duration
from mqpy.model.filters import InvalidFilter, parse_filter
from mqpy.model.topics import TOPIC_NAME, is_valid_pattern

GROUP_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")
MAX_DELAY_SECONDS = 31_536_000  # one year, the broker's limit
_PREFIX = "^="
# Kept out of a --filter NAME, so a comparison this syntax does not have is refused.
_OPERATOR_CHARACTERS = frozenset("=!<>~^")
_FILTER_FORMS = (
    "write NAME=VALUE (equals; repeat for any of several values), NAME^=PREFIX (starts "
    "with), NAME (has the attribute) or !NAME (lacks it), where NAME has no spaces "
    "around it and none of = ! < > ~ ^, and VALUE does not start with '=' (there is no "
    "==, != or >=)"
)


def topic_name(text: str) -> str:
    """A topic to publish to (argparse `type`)."""
    if not TOPIC_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a topic name: 1-200 of A-Z a-z 0-9 . _ - (such as orders.eu)"
        )
    return text


def topic_pattern(text: str) -> str:
    """A topic, or a pattern of them, to receive from (argparse `type`)."""
    if not is_valid_pattern(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a topic or pattern: segments of A-Z a-z 0-9 _ - joined by "
            "dots, where a segment '*' matches any one and a last '>' any number "
            "(orders.eu, orders.*, orders.>)"
        )
    return text


def group_name(text: str) -> str:
    """A consumer group (argparse `type`)."""
    if not GROUP_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a group name: 1-100 of A-Z a-z 0-9 . _ -"
        )
    return text


def delay(text: str) -> float:
    """Seconds to hold a message back: `90`, `30s`, `5m`, `2h` (argparse `type`)."""
    try:
        seconds = parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if seconds > MAX_DELAY_SECONDS:
        raise argparse.ArgumentTypeError(f"{text!r} is over a year, the longest delay")
    return seconds


def point_in_time(text: str) -> str:
    """A moment as the broker reads it (argparse `type`): an RFC 3339 time with an
    offset, or a duration (`90s`, `15m`, `1h`, `2d`) meaning that long ago."""
    try:
        ago = parse_duration(text)
    except ValueError:
        pass
    else:
        moment = datetime.now(UTC) - timedelta(seconds=ago)
        return moment.isoformat(timespec="milliseconds").removesuffix("+00:00") + "Z"
    given = text.strip()
    zulu = given[-1:] in ("Z", "z")
    try:
        parsed = datetime.fromisoformat(given[:-1] if zulu else given)
    except ValueError:
        parsed = None
    if parsed is None or not (zulu or parsed.tzinfo is not None):
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a time with an offset (such as 2026-11-26T23:00:00Z) nor "
            "a duration meaning that long ago (such as 90s, 15m, 1h or 2d)"
        )
    return given


def start_at(text: str) -> str:
    """Where a new subscription starts (argparse `type`): new, earliest, or a moment as
    `point_in_time` reads it."""
    if text.strip().lower() in ("new", "earliest"):
        return text.strip().lower()
    try:
        return point_in_time(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a start: give new, earliest, a time with an offset (such as "
            "2026-11-26T23:00:00Z) or a duration meaning that long ago (such as 1h)"
        ) from None


def message_options(parser: argparse.ArgumentParser) -> None:
    """--attr, --ordering-key, --delay or --deliver-at, --idempotency-key."""
    parser.add_argument(
        "--attr",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an attribute of the message, which receivers' filters match; repeat for more",
    )
    parser.add_argument(
        "--ordering-key",
        metavar="KEY",
        help="messages with one key reach each receiver (or group) one at a time, in order",
    )
    when = parser.add_mutually_exclusive_group()
    when.add_argument(
        "--delay",
        type=delay,
        metavar="DURATION",
        help="deliver no sooner than this from now: seconds, or 30s, 5m, 2h",
    )
    when.add_argument(
        "--deliver-at",
        metavar="TIME",
        help="deliver no sooner than this RFC 3339 time, such as 2026-11-27T08:00:00Z",
    )
    parser.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="a repeat with this key within the broker's --dedup-window stores nothing",
    )


def key_values(items: list[str], option: str) -> dict[str, str] | None:
    """`["k=v", ...]` as a dict (None for none); a malformed or repeated name is a
    usage error."""
    if not items:
        return None
    pairs: dict[str, str] = {}
    for item in items:
        name, equals, value = item.partition("=")
        if not equals or not name:
            raise _usage(f"{option} {item!r}: write NAME=VALUE")
        if name in pairs:
            raise _usage(f"{option} {name} is given twice")
        pairs[name] = value
    return pairs


def filter_of(items: list[str]) -> dict[str, Any] | None:
    """`--filter` items as the broker's filter object (None for none).

    `NAME=VALUE` equal (repeat NAME for any of several values), `NAME^=PREFIX` starts
    with, `NAME` has the attribute, `!NAME` lacks it.
    """
    if not items:
        return None
    conditions: dict[str, Any] = {}
    for item in items:
        name, condition = _condition(item)
        if name not in conditions:
            conditions[name] = condition
            continue
        earlier = conditions[name]
        if isinstance(condition, str) and isinstance(earlier, str | list):
            conditions[name] = [*([earlier] if isinstance(earlier, str) else earlier), condition]
        else:
            raise _usage(
                f"--filter {item!r}: {name} already has a condition; only NAME=VALUE may "
                "repeat (any of the values)"
            )
    try:
        parse_filter(conditions)
    except InvalidFilter as error:
        raise _usage(f"--filter: {error}") from None
    return conditions


def _condition(item: str) -> tuple[str, Any]:
    name, condition = _split_condition(item)
    # `kind==x`, `kind!=x`, `n>=3`, `n>3` would otherwise pass as conditions on odd
    # names (`kind!`) or odd values (`=x`) and silently match nothing the user meant.
    text = condition if isinstance(condition, str) else condition.get("prefix", "")
    if (
        not name
        or name != name.strip()
        or any(char in _OPERATOR_CHARACTERS for char in name)
        or text.startswith("=")
    ):
        raise _usage(f"--filter {item!r} does not parse: {_FILTER_FORMS}")
    return name, condition


def _split_condition(item: str) -> tuple[str, str | dict[str, Any]]:
    if _PREFIX in item:
        name, _, prefix = item.partition(_PREFIX)
        return name, {"prefix": prefix}
    if "=" in item:
        name, _, value = item.partition("=")
        return name, value
    if item.startswith("!"):
        return item[1:], {"exists": False}
    return item, {"exists": True}


def _usage(message: str) -> CommandFailed:
    return CommandFailed(EXIT_USAGE, message)
