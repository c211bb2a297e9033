"""The values request bodies and paths carry, as msgspec types (so decoding checks them
and the OpenAPI document describes them from the same source) and as checks of what a
type cannot say, each failing with a 400 that names the field and how to fix it."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from msgspec import Meta

from mqpy.api.problems import Problem, invalid_field
from mqpy.model.domain import EARLIEST, StartAt
from mqpy.model.filters import InvalidFilter, parse_filter
from mqpy.model.topics import TOPIC_NAME, is_valid_pattern

# Where a name is checked with a regex, `fullmatch` is the rule: JSON Schema's `$` (in
# the types below, for the document) would let a trailing newline through in Python.
GROUP_NAME_RULE = "1 to 100 letters, digits, '.', '_' or '-'"
TOPIC_NAME_RULE = "1 to 200 letters, digits, '.', '_' or '-'"
MAX_DELAY_SECONDS = 31_536_000  # a year
MAX_SUBSCRIPTION_ID = 2**63 - 1  # the largest id a store's integer column holds

TopicPattern = Annotated[
    str,
    Meta(
        pattern=r"^[A-Za-z0-9._*>-]{1,200}$",
        description="a topic name, or a pattern: `orders.*` matches one segment, "
        "`orders.>` any number of further segments",
    ),
]
GroupName = Annotated[
    str,
    Meta(
        pattern=r"^[A-Za-z0-9._-]{1,100}$",
        description=f"members of a group share its messages: {GROUP_NAME_RULE}",
    ),
]
Attributes = Annotated[
    dict[
        Annotated[str, Meta(min_length=1, max_length=128)],
        Annotated[str, Meta(max_length=1024)],
    ],
    Meta(max_length=100, description="at most 100 string attributes, which filters match on"),
]
OrderingKey = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=200,
        description="messages with the same key are delivered one at a time, in order",
    ),
]
IdempotencyKey = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=200,
        description="a repeat with the same key (same API key, within --dedup-window) "
        "enqueues nothing and answers with the first message's id",
    ),
]
DelaySeconds = Annotated[
    float, Meta(ge=0, le=MAX_DELAY_SECONDS, description="deliver no sooner than this from now")
]
Timestamp = Annotated[
    str,
    Meta(
        extra_json_schema={"format": "date-time"},
        description="an RFC 3339 time with an offset, such as 2026-11-26T23:00:00Z",
    ),
]
StartAtText = Annotated[
    str,
    Meta(
        description='where a new subscription starts: "new" (what is published from now '
        'on, the default), "earliest" (every retained message too) or an RFC 3339 time '
        "(the retained messages published at or after it too)",
        examples=["new", "earliest", "2026-11-26T23:00:00Z"],
    ),
]

_CONDITION_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "description": "the attribute equals this"},
        {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 100},
        {
            "type": "object",
            "properties": {"prefix": {"type": "string"}},
            "required": ["prefix"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {"exists": {"type": "boolean"}},
            "required": ["exists"],
            "additionalProperties": False,
        },
    ]
}
FILTER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "conditions on message attributes, all of which must hold",
    "maxProperties": 50,
    "propertyNames": {"minLength": 1},
    "additionalProperties": _CONDITION_SCHEMA,
}
# Decoded as any JSON and checked by mqpy.model.filters, whose messages say what is wrong.
RawFilter = Annotated[Any, Meta(extra_json_schema={"anyOf": [FILTER_SCHEMA, {"type": "null"}]})]


def check_topic_name(value: str, field: str = "topic") -> str:
    if not TOPIC_NAME.fullmatch(value):
        raise invalid_field(field, f"{value!r} is not a topic name: use {TOPIC_NAME_RULE}")
    return value


def check_topic_pattern(value: str, field: str = "topic") -> str:
    """A topic name, or a pattern where a subscription is made."""
    if not is_valid_pattern(value):
        raise invalid_field(
            field,
            f"{value!r} is not a topic name or pattern: use {TOPIC_NAME_RULE}, with `*` "
            "for one whole segment (orders.*) or `>` as the last (orders.>)",
        )
    return value


def check_group(value: str | None) -> str | None:
    if value is not None and (len(value) > 100 or not TOPIC_NAME.fullmatch(value)):
        raise invalid_field("group", f"{value!r} is not a group name: use {GROUP_NAME_RULE}")
    return value


def check_filter(value: Any) -> Any:
    """A filter as mqpy.model.filters accepts it, or None for none."""
    if value is None:
        return None
    try:
        return parse_filter(value)
    except InvalidFilter as exc:
        raise invalid_field("filter", str(exc)) from None


def parse_timestamp(value: str, field: str) -> float:
    """Unix seconds of an RFC 3339 time, which must carry its offset."""
    text = value.strip()
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
        seconds = moment.timestamp()
    except (ValueError, OverflowError):
        moment = None
    if moment is None or moment.tzinfo is None:
        raise invalid_field(
            field,
            f"{field} {value!r} is not an RFC 3339 time with an offset; "
            "send one such as 2026-11-26T23:00:00Z",
        )
    return seconds


def parse_start_at(value: str | None, field: str = "start_at") -> StartAt:
    """A subscription's start: None for "new", EARLIEST, or a time."""
    word = "new" if value is None else value.strip().lower()
    if word == "new":
        return None
    if word == "earliest":
        return EARLIEST
    try:
        return parse_timestamp(str(value), field)
    except Problem:
        raise invalid_field(
            field,
            f'{field} must be "new", "earliest" or an RFC 3339 time with an offset such '
            f"as 2026-11-26T23:00:00Z; got {str(value)[:80]!r}",
        ) from None


def parse_subscription_id(raw: str) -> int:
    """A subscription id from a path; anything that cannot be one is not found."""
    if raw.isascii() and raw.isdigit() and len(raw) <= 19 and 1 <= int(raw) <= MAX_SUBSCRIPTION_ID:
        return int(raw)
    raise Problem(
        404,
        "unknown-subscription",
        f"there is no subscription with id {raw!r}",
    )
