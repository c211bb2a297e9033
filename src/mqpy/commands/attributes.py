"""`--attr NAME=VALUE` and `--filter CONDITION` as the broker takes them: attributes as
a JSON object, conditions as its filter object, each checked here so a typo is a usage
error (exit 2) before anything is sent."""

from __future__ import annotations

from typing import Any

from mqpy.commands import EXIT_USAGE, CommandFailed
from mqpy.model.filters import InvalidFilter, parse_filter

_PREFIX = "^="
# Kept out of a --filter NAME, so a comparison this syntax does not have is refused.
_OPERATOR_CHARACTERS = frozenset("=!<>~^")
_FILTER_FORMS = (
    "write NAME=VALUE (equals; repeat for any of several values), NAME^=PREFIX (starts "
    "with), NAME (has the attribute) or !NAME (lacks it), where NAME has no spaces "
    "around it and none of = ! < > ~ ^, and VALUE does not start with '=' (there is no "
    "==, != or >=)"
)
FILTER_HELP = """\
--filter NAME=VALUE: the attribute equals VALUE (repeat for any of several values);
NAME^=PREFIX: it starts with PREFIX; NAME: the message has it; !NAME: it has not.
Nothing else parses: kind==x, kind!=x or n>3 is refused.
Members of one group must give the same filter."""


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
