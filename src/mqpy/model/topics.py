"""Topic names and NATS-style patterns: `orders.*` matches one segment, `orders.>` any
number (at least one) of further segments.

Topics under `mq.` are the broker's own (`mq.events`, events.py). As MQTT does for
`$SYS`, a pattern that starts with a wildcard (`>`, `*.events`) does not match them:
a subscriber gets the broker's events only by naming them (`mq.events`, `mq.>`).
"""

from __future__ import annotations

import re

TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,200}")
TOPIC_PATTERN = re.compile(r"[A-Za-z0-9._*>-]{1,200}")
# The first segment of the broker's own topics.
RESERVED_SEGMENT = "mq"
_WILDCARDS = ("*", ">")


def is_reserved(topic: str) -> bool:
    """Whether a topic (or a pattern) names the broker's own topics: nobody publishes
    to them, and subscribing needs an admin key or a key that names them."""
    return topic.split(".", 1)[0] == RESERVED_SEGMENT


def is_pattern(topic: str) -> bool:
    """Whether a subscription's topic is a pattern rather than one topic's name."""
    return "*" in topic or ">" in topic


def is_valid_pattern(pattern: str) -> bool:
    """A pattern's `*` and `>` stand alone as segments, and `>` only comes last."""
    if not TOPIC_PATTERN.fullmatch(pattern):
        return False
    segments = pattern.split(".")
    for index, segment in enumerate(segments):
        if not segment:
            return False
        if ("*" in segment or ">" in segment) and segment not in ("*", ">"):
            return False
        if segment == ">" and index != len(segments) - 1:
            return False
    return True


def matches(pattern: str, topic: str) -> bool:
    """Whether `topic` is one of the topics `pattern` names."""
    # A topic is the pattern that names only itself, and has no `>` to reach deeper.
    return covers(pattern, topic)


def covers(allowed: str, pattern: str) -> bool:
    """Whether every topic `pattern` can match is one `allowed` matches too (a key
    allowed `orders.>` may subscribe to `orders.*`, one allowed `orders.*` may not
    subscribe to `orders.>`). As in `matches`, a leading wildcard never covers the
    broker's own topics."""
    if is_reserved(pattern) and allowed.split(".", 1)[0] in _WILDCARDS:
        return False
    wanted = allowed.split(".")
    asked = pattern.split(".")
    for index, segment in enumerate(wanted):
        if segment == ">":
            return len(asked) > index
        if index >= len(asked):
            return False
        if asked[index] == ">":
            return False  # `>` reaches deeper than anything but `>` allows
        if segment != "*" and segment != asked[index]:
            return False
    return len(asked) == len(wanted)
