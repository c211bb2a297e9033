"""Command-line spellings of the broker's message and subscription fields: topics,
groups, delays, times, ids and limits, checked here so a typo is a usage error (exit 2)
before anything is sent; and the options more than one command takes
(`message_options`, `receiving_options`). Attributes and filters are `attributes`'."""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from mqpy.config import parse_duration
from mqpy.model.topics import TOPIC_NAME, is_valid_pattern

N = TypeVar("N", int, float)
GROUP_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")
MAX_DELAY_SECONDS = 31_536_000  # one year, the broker's limit


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
    seconds = _duration(text)
    if seconds > MAX_DELAY_SECONDS:
        raise argparse.ArgumentTypeError(f"{text!r} is over a year, the longest delay")
    return seconds


def at_least_a_second(text: str) -> float:
    """A duration of 1 s or more: `90`, `30m`, `24h` (argparse `type`)."""
    seconds = _duration(text)
    if seconds < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is under a second; give 1s or more")
    return seconds


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def positive_int(text: str) -> int:
    """A whole number of 1 or more (argparse `type`)."""
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give 1 or more")
    return number


def per_second(text: str) -> float:
    """A rate of deliveries per second above 0, such as 50 or 0.5 (argparse `type`)."""
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


def bounded(kind: Callable[[str], N], low: N, high: N) -> Callable[[str], N]:
    """An argparse `type`: a number of `kind` from `low` to `high`."""

    def parse(text: str) -> N:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r}: give {low:g} to {high:g}")
        return value

    return parse


def subscription_id(text: str) -> int:
    """A subscription's id, as `mqpy subscriptions list` shows it (argparse `type`)."""
    if not text.isascii() or not text.isdigit():
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a subscription id: a whole number, as `mqpy subscriptions "
            "list` shows it"
        )
    return int(text)


def add_subscription_id(parser: argparse.ArgumentParser) -> None:
    """The ID argument of `mqpy subscriptions show|pause|...|pull ID`."""
    parser.add_argument(
        "id", type=subscription_id, metavar="ID", help="the subscription's id, as listed"
    )


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


def receiving_options(parser: argparse.ArgumentParser) -> None:
    """--topic (a topic or pattern), --group and --filter: what a subscription (or
    `listen`) receives. The epilog should carry `attributes.FILTER_HELP`."""
    parser.add_argument(
        "--topic",
        type=topic_pattern,
        default=None,
        help="the topic to receive, or a pattern: orders.* (one more segment), orders.> "
        "(any number) (default: the broker's, 'default')",
    )
    parser.add_argument(
        "--group",
        type=group_name,
        default=None,
        help="join this consumer group: each message goes to one of its members",
    )
    parser.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="CONDITION",
        help="receive only messages whose attributes match (all conditions must hold); see below",
    )
