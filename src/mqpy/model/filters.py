"""Subscription filters on message attributes.

A filter maps attribute names to conditions, all of which must hold:
`"value"` (equal), `["a", "b"]` (any of), `{"prefix": "ord"}`, `{"exists": true|false}`.
A message that does not match is never delivered to the subscription.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mqpy.model.domain import Condition, Filter

MAX_CONDITIONS = 50
MAX_VALUES = 100


class InvalidFilter(ValueError):
    """A filter that is not one of the documented shapes; the text says why."""


def parse_filter(raw: Any) -> Filter:
    """`raw` (decoded JSON) as a filter, or `InvalidFilter` saying what is wrong."""
    if not isinstance(raw, dict):
        raise InvalidFilter("filter must be an object of attribute name to condition")
    if len(raw) > MAX_CONDITIONS:
        raise InvalidFilter(f"filter may hold at most {MAX_CONDITIONS} conditions")
    parsed: dict[str, Condition] = {}
    for name, condition in raw.items():
        if not isinstance(name, str) or not name:
            raise InvalidFilter("filter attribute names must be non-empty strings")
        parsed[name] = _parse_condition(name, condition)
    return parsed


def _parse_condition(name: str, condition: Any) -> Condition:
    if isinstance(condition, str):
        return condition
    if isinstance(condition, list):
        if not condition or len(condition) > MAX_VALUES:
            raise InvalidFilter(f"filter.{name}: a list needs 1 to {MAX_VALUES} strings")
        if not all(isinstance(value, str) for value in condition):
            raise InvalidFilter(f"filter.{name}: a list may hold only strings")
        return list(condition)
    if isinstance(condition, dict) and len(condition) == 1:
        ((kind, value),) = condition.items()
        if kind == "prefix" and isinstance(value, str):
            return {"prefix": value}
        if kind == "exists" and isinstance(value, bool):
            return {"exists": value}
    raise InvalidFilter(
        f'filter.{name}: use "value", ["a", "b"], {{"prefix": "text"}} or {{"exists": true|false}}'
    )


def matches(filter_: Filter | None, attributes: Mapping[str, str]) -> bool:
    """Whether a message with `attributes` passes `filter_` (no filter passes all)."""
    if not filter_:
        return True
    return all(_holds(condition, attributes.get(name)) for name, condition in filter_.items())


def _holds(condition: Condition, value: str | None) -> bool:
    if isinstance(condition, str):
        return value == condition
    if isinstance(condition, list):
        return value in condition
    if "exists" in condition:
        return (value is not None) == condition["exists"]
    prefix = condition["prefix"]
    return value is not None and isinstance(prefix, str) and value.startswith(prefix)
