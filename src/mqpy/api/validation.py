"""msgspec's decoding errors, retold as sentences about the request.

msgspec says ``Expected `int`, got `str` - at `$.id` ``: precise, but in a parser's
words. A caller needs which field, what it must be, what was sent and what to do, so
every body the API decodes goes through `json_error` or `validation_problem` here,
rather than each route wording its own.
"""

from __future__ import annotations

import re
from typing import Any

from mqpy.api.problems import Problem, invalid_body, invalid_field
from mqpy.model.domain import DeliveryFormat, SubscriptionKind

# The field names a user wrote in the seed protocol (keys arrive lower-cased).
DISPLAY_NAMES = {"clienturl": "ClientURL"}

# What a field is for, said where it is missing or mistyped.
_HINTS = {
    "id": "the id that /connect answered",
    "body": "the message text",
    "mode": "'send' or 'receive'",
    "clienturl": "the URL messages are POSTed to",
    "url": "the URL messages are POSTed to",
    "role": "publisher, subscriber or admin",
    "receiver_id": "the id of the receiver whose dead letters to redrive",
    "delay_seconds": "how long to wait before delivering",
    "messages": 'the messages of a batch, each an object like {"body": "hello"}',
}
# Names whose rule a regex states: say the rule instead.
_RULES = {
    "topic": "1 to 200 letters, digits, '.', '_' or '-' (and in a pattern, `*` or `>`)",
    "group": "1 to 100 letters, digits, '.', '_' or '-'",
}
_TYPE_WORDS = {
    "int": "a whole number",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "object": "a JSON object",
    "array": "an array",
    "null": "null",
}
_UNITS = {"str": "characters", "array": "items", "object": "entries"}
_COMPARISONS = {">=": "of at least", ">": "greater than", "<=": "of at most", "<": "less than"}

_AT = re.compile(r" - at `(?:(key)` in `)?\$([^`]*)`$")
_EXPECTED_GOT = re.compile(r"Expected `([^`]+)`, got `([^`]+)`")
_BOUND = re.compile(r"Expected `([^`]+)` (>=|>|<=|<) (\S+)")
_LENGTH = re.compile(r"Expected `([^`]+)` of length (>=|<=) (\d+)")
_REGEX = re.compile(r"Expected `str` matching regex")
_MISSING = re.compile(r"Object missing required field `([^`]+)`")
_UNKNOWN = re.compile(r"Object contains unknown field `([^`]+)`")
_ENUM = re.compile(r"Invalid enum value ")
# The words a field of a few fixed values takes, for the sentence refusing another.
_CHOICES = {
    "kind": tuple(SubscriptionKind),
    "format": tuple(DeliveryFormat),
}
_BYTE = re.compile(r"\(byte (\d+)\)")


def json_error(message: str, raw: bytes) -> Problem:
    """A 400 for a body that is not JSON: where it goes wrong and what to send."""
    if message == "Input data was truncated":
        if not raw.strip():
            return invalid_body("the body is empty; send a JSON object of this request's fields")
        return invalid_body(
            f"the body stops before its JSON is complete ({len(raw)} bytes arrived, "
            "a closing quote, ] or } is missing); send the whole JSON object"
        )
    reason = _BYTE.sub("", message.removeprefix("JSON is malformed: ")).strip()
    where = _BYTE.search(message)
    if where is not None:
        at = int(where.group(1))
        shown = raw[max(0, at - 10) : at + 10].decode("utf-8", "replace")
        reason += f" at byte {at}, near {shown!r}"
    return invalid_body(
        f"the body is not valid JSON: {reason}; send a JSON object, with keys and strings "
        "in double quotes and no trailing commas"
    )


def validation_problem(message: str, data: Any) -> Problem:
    """A 400 naming the field msgspec refused in `data`, said as a sentence."""
    at = _AT.search(message)
    summary = message[: at.start()] if at else message
    path = at.group(2) if at else ""
    steps = _steps(path)
    in_key = bool(at and at.group(1))
    if missing := _MISSING.fullmatch(summary):
        steps.append(missing.group(1))
        return _field_problem(steps, _missing_sentence(steps))
    if unknown := _UNKNOWN.fullmatch(summary):
        steps.append(unknown.group(1))
        where = f"of `{_path_text(steps[:-1])}`" if len(steps) > 1 else "of this request"
        return _field_problem(steps, f"`{steps[-1]}` is not a field {where}; check its spelling")
    if not steps:
        return invalid_body(f"the body is not what this request takes: {summary}")
    # msgspec points into a mapping as `key` in `$.attributes` or `$.attributes[...]`.
    in_value = path.endswith("[...]")
    subject = f"`{_path_text(steps)}`"
    if in_key or in_value:
        subject = f"each {'key' if in_key else 'value'} of {subject}"
    sent = "" if in_key or in_value else _sent(data, steps)
    return _field_problem(steps, f"{subject} must be {_requirement(summary, steps)}{sent}")


def _steps(path: str) -> list[str]:
    """`.retry_policy.max_attempts` or `.messages[0].body` as names and indexes."""
    return [step for step in re.split(r"\.|\[|\]", path) if step and step != "..."]


def _path_text(steps: list[str]) -> str:
    names = [DISPLAY_NAMES.get(step, step) for step in steps]
    return ".".join(names)


def _field_problem(steps: list[str], detail: str) -> Problem:
    return invalid_field(DISPLAY_NAMES.get(steps[0], steps[0]), detail)


def _missing_sentence(steps: list[str]) -> str:
    name = steps[-1]
    hint = _HINTS.get(name)
    what = f" ({hint})" if hint else ""
    if len(steps) == 1:
        return f"the request needs `{DISPLAY_NAMES.get(name, name)}`{what}, and it is missing"
    return f"`{_path_text(steps[:-1])}` needs `{name}`{what}, and it is missing"


def _requirement(summary: str, steps: list[str]) -> str:
    """What the field must be, in words."""
    if got := _EXPECTED_GOT.match(summary):
        hint = _HINTS.get(steps[-1])
        return _type_words(got.group(1)) + (f" ({hint})" if hint else "")
    if length := _LENGTH.match(summary):
        kind, comparison, count = length.groups()
        unit = _UNITS.get(kind.split(" | ")[0], "items")
        if count == "1":
            unit = unit.removesuffix("s")
        return f"{_type_words(kind)} {_COMPARISONS[comparison]} {count} {unit}"
    if bound := _BOUND.match(summary):
        kind, comparison, limit = bound.groups()
        limit = limit.removesuffix(".0")
        return f"{_type_words(kind)} {_COMPARISONS[comparison]} {limit}"
    if _ENUM.match(summary) and steps[-1] in _CHOICES:
        *others, last = (f"'{choice}'" for choice in _CHOICES[steps[-1]])
        return f"one of {', '.join(others)} or {last}"
    if _REGEX.match(summary):
        rule = _RULES.get(steps[-1])
        return f"made of {rule}" if rule else summary.removeprefix("Expected `str` ")
    return summary


def _type_words(kinds: str) -> str:
    """`int | null` as "a whole number": null stands for leaving the field out."""
    words = [_TYPE_WORDS.get(kind, kind) for kind in kinds.split(" | ") if kind != "null"]
    return " or ".join(words) or "null"


def _sent(data: Any, steps: list[str]) -> str:
    """`, not ...` naming what was sent at `steps`, or nothing where it cannot be found."""
    value = data
    for step in steps:
        if isinstance(value, dict) and step in value:
            value = value[step]
        elif isinstance(value, list) and step.isdigit() and int(step) < len(value):
            value = value[int(step)]
        else:
            return ""
    text = f", not {_describe(value)}"
    if steps == ["body"] and isinstance(value, dict | list):
        text += (
            '; to send JSON, encode it as a string first, as in {"body": "{\\"order\\": 17}"}: '
            "receivers get that string as the delivery's body"
        )
    return text


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        if len(value) > 40:
            return f"a string of {len(value)} characters starting {value[:20]!r}"
        return f"the string {value!r}"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, list):
        return f"an array of {len(value)} items"
    return f"a JSON object of {len(value)} entries"
