"""Topic patterns: which topics a pattern names (`matches`), and which patterns a key's
pattern allows (`covers`). Routing and keys both rest on these; the routing tests check
them end to end, these check the rules one case at a time."""

from __future__ import annotations

import pytest

from mqpy.model.topics import covers, matches


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("orders", "orders", True),
        ("orders", "orders.eu", False),
        ("orders.eu", "orders", False),
        ("orders.*", "orders.eu", True),
        ("orders.*", "orders", False),
        ("orders.*", "orders.eu.paid", False),
        ("*.eu", "orders.eu", True),
        ("*.eu", "orders.us", False),
        ("orders.>", "orders.eu", True),
        ("orders.>", "orders.eu.paid", True),
        ("orders.>", "orders", False),
        (">", "orders", True),
        # The broker's own topics (mq.*) are never reached by a leading wildcard.
        ("*", "mq", False),
        (">", "mq.events", False),
        ("*.events", "mq.events", False),
        ("mq.>", "mq.events", True),
        ("mq.events", "mq.events", True),
    ],
)
def test_a_pattern_names_these_topics(pattern: str, topic: str, expected: bool) -> None:
    assert matches(pattern, topic) is expected


@pytest.mark.parametrize(
    ("allowed", "pattern", "expected"),
    [
        ("orders.>", "orders.*", True),
        ("orders.>", "orders.>", True),
        ("orders.*", "orders.>", False),
        ("orders.*", "orders.*", True),
        ("orders.*", "orders.eu", True),
        ("orders.eu", "orders.*", False),
        ("*.eu", "orders.eu", True),
        (">", "orders.>", True),
        (">", "mq.>", False),
        ("mq.>", "mq.*", True),
    ],
)
def test_an_allowed_pattern_covers_these_patterns(
    allowed: str, pattern: str, expected: bool
) -> None:
    assert covers(allowed, pattern) is expected
