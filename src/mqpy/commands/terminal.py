"""What commands show on a terminal: a progress line, and outside text made safe to print.

The progress line is hand-written rather than `rich` or `tqdm`: it needs a counter, a
rate and, when the input's size is known, a bar. That is some forty lines, not a
dependency. It draws only on a terminal, so pipes and logs never see carriage returns.
"""

from __future__ import annotations

import time
from typing import TextIO

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
