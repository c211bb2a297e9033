"""Topic names and NATS-style patterns: `orders.*` matches one segment, `orders.>` any
number (at least one) of further segments."""

from __future__ import annotations

import re

TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,200}")
TOPIC_PATTERN = re.compile(r"[A-Za-z0-9._*>-]{1,200}")


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
    wanted = pattern.split(".")
    actual = topic.split(".")
    for index, segment in enumerate(wanted):
        if segment == ">":
            return len(actual) > index
        if index >= len(actual):
            return False
        if segment != "*" and segment != actual[index]:
            return False
    return len(actual) == len(wanted)


def covers(allowed: str, pattern: str) -> bool:
    """Whether every topic `pattern` can match is one `allowed` matches too (a key
    allowed `orders.>` may subscribe to `orders.*`, one allowed `orders.*` may not
    subscribe to `orders.>`)."""
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
