"""Log lines for people by default, or one JSON object per line for machines.

A JSON line has `time` (UTC, ISO 8601), `level`, `logger` and `message`, plus every
field a call passed with `extra=` (a delivery failure has receiver_id, message_id,
attempt, reason and status), so log pipelines can filter without parsing sentences.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

HUMAN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# One of several processes started by `mqpy serve --processes N` names itself.
PROCESS_FORMAT = (
    "%(asctime)s %(levelname)s %(name)s [process %(process_slot)s, pid %(pid)d]: %(message)s"
)

# What every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: a field that is not JSON (a path, an exception) still logs.
        return json.dumps(entry, ensure_ascii=False, default=str)


class ProcessTag(logging.Filter):
    """Marks every record with which of several processes wrote it (`2/4`) and its pid:
    `process_slot` and `pid` fields in JSON, `[process 2/4, pid 1234]` in human lines."""

    def __init__(self, slot: str) -> None:
        super().__init__()
        self.slot = slot

    def filter(self, record: logging.LogRecord) -> bool:
        record.process_slot = self.slot
        record.pid = record.process
        return True


def configure_logging(
    level: str, log_format: str, stream: TextIO | None = None, *, process_slot: str = ""
) -> None:
    """Send every logger's records to `stream` (stderr) at `level` in `log_format`;
    with a `process_slot` (`2/4`), every line says which process wrote it."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if process_slot:
        handler.addFilter(ProcessTag(process_slot))
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(PROCESS_FORMAT if process_slot else HUMAN_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
