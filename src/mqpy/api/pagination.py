"""`limit` and `cursor`, the query parameters of every list."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from mqpy.api.problems import Problem, invalid_field

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# Cursors are short tokens this server wrote; anything much longer was not one.
MAX_CURSOR_CHARS = 500


@dataclass(frozen=True, slots=True)
class PageQuery:
    cursor: str | None
    limit: int


def page_query(request: web.Request) -> PageQuery:
    """The page a list request asks for, or a 400 saying what is wrong with it."""
    return PageQuery(_cursor(request.query.get("cursor")), _limit(request.query.get("limit")))


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    text = raw.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 5 and 1 <= int(text) <= MAX_LIMIT):
        raise invalid_field(
            "limit", f"limit must be a whole number from 1 to {MAX_LIMIT}, not {raw!r}"
        )
    return int(text)


def _cursor(raw: str | None) -> str | None:
    if raw is None:
        return None
    if not raw or len(raw) > MAX_CURSOR_CHARS:
        raise Problem(
            400,
            "bad-cursor",
            f"the cursor {raw[:50]!r} was not handed out by this list; pass a "
            "next_cursor from the previous page, or none for the first",
        )
    return raw
