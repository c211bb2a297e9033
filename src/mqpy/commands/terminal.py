"""What commands print: tables, `name  value` fields, JSON, a progress line, and text
from outside (the server's answers, message bodies) made safe to print.

The progress line is hand-written rather than `rich` or `tqdm`: it needs a counter, a
rate and, when the input's size is known, a bar. That is some forty lines, not a
dependency. It draws only on a terminal, so pipes and logs never see carriage returns.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO, Any, TextIO

_REDRAW_SECONDS = 0.1
_BAR_WIDTH = 24
_CLEAR_LINE = "\r\x1b[K"
# Control characters (C0, DEL, C1), escaped: message bodies and errors come from outside,
# and raw escape sequences in them could rewrite the user's terminal, or split a line.
_CONTROLS = [*range(0x20), *range(0x7F, 0xA0)]
_ESCAPES = {code: f"\\x{code:02x}" for code in _CONTROLS} | {
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
}


def visible(text: str) -> str:
    """`text` on one line, control characters written as escapes (\\n, \\x1b)."""
    return text.translate(_ESCAPES)


def text(value: Any) -> str:
    """A value from the server on one line, control characters escaped; `-` for none."""
    if value is None:
        return "-"
    return visible(str(value))


def shortened(value: str, width: int) -> str:
    """`value` made visible, cut to `width` characters (the last one an ellipsis)."""
    shown = visible(value)
    return shown if len(shown) <= width else shown[: width - 1] + "…"


def rate(value: Any) -> str:
    """A per-second figure to two places; `?` for what is not a number."""
    return f"{value:.2f}" if isinstance(value, int | float) else "?"


def utc_time(value: Any) -> str:
    """Seconds since the epoch as `2026-11-26T23:00:00Z`; `?` for what is not a number."""
    if not isinstance(value, int | float):
        return "?"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def print_json(value: Any, out: IO[str] | None = None) -> None:
    print(json.dumps(value, indent=2), file=out or sys.stdout)


def print_answer(answer: Any, *, as_json: bool, shown: Callable[[], str]) -> None:
    """The server's answer as JSON (--json), else as `shown()` lays it out for people;
    `shown` is called only then, so --json prints even an answer it could not lay out."""
    if as_json:
        print_json(answer)
    else:
        print(shown())


def print_listing(
    answer: dict[str, list[Any]],
    *,
    as_json: bool,
    columns: tuple[str, ...],
    row: Callable[[Any], tuple[str, ...]],
    empty: str,
) -> None:
    """A list the server answered (`{"topics": [...]}`, every page): as JSON (--json), as
    a table of `columns` with a `row` each, or the sentence `empty` when there is none."""
    if as_json:
        print_json(answer)
        return
    [items] = answer.values()
    print(format_table(columns, [row(item) for item in items]) if items else empty)


def printed(line: str) -> bool:
    """Print a line; False if whoever read our output is gone (`mqpy listen | head -1`),
    after which stdout goes nowhere, so later prints cannot fail."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return False
    return True


class Progress:
    """Counts items (and bytes of input, for the bar when `total_bytes` is known)."""

    def __init__(self, stream: TextIO, noun: str, total_bytes: int | None = None) -> None:
        self.stream = stream
        self.noun = noun
        self.total_bytes = total_bytes
        self.enabled = stream.isatty()
        self.count = 0
        self.done_bytes = 0
        self._started = time.monotonic()
        self._drawn = 0.0

    def advance(self, items: int = 1, nbytes: int = 0) -> None:
        self.count += items
        self.done_bytes += nbytes
        now = time.monotonic()
        if self.enabled and now - self._drawn >= _REDRAW_SECONDS:
            self._drawn = now
            self.stream.write(_CLEAR_LINE + self.line(now))
            self.stream.flush()

    def finish(self) -> None:
        """Erase the line, so what follows starts on a clean one."""
        if self.enabled and self._drawn:
            self.stream.write(_CLEAR_LINE)
            self.stream.flush()

    def line(self, now: float) -> str:
        elapsed = max(now - self._started, 1e-9)
        text = f"{self.count} {self.noun}  {self.count / elapsed:.0f}/s"
        if not self.total_bytes:
            return text
        fraction = min(self.done_bytes / self.total_bytes, 1.0)
        filled = round(fraction * _BAR_WIDTH)
        bar = "#" * filled + "." * (_BAR_WIDTH - filled)
        return f"[{bar}] {fraction:4.0%}  {text}"


def format_table(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """Left-aligned columns under a header, two spaces apart."""
    widths = [max(len(cell) for cell in column) for column in zip(columns, *rows, strict=True)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (columns, *rows)
    )


def format_fields(fields: list[tuple[str, str]]) -> str:
    """`name   value` lines, values aligned."""
    width = max(len(name) for name, _ in fields)
    return "\n".join(f"{name.ljust(width)}  {value}".rstrip() for name, value in fields)
