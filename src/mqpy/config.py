"""One settings object, filled from command-line flags, then `MQPY_*` environment
variables, then defaults.

Each field's metadata is its `--help` text; the command line and the environment are
both derived from this one list, so a new setting needs one line here.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "MQPY_"
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("human", "json")
DEFAULT_DATA_DIR = Path("mqpy-data")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(text: str) -> float:
    """Seconds from `2.5`, `500ms`, `30s`, `5m`, `24h` or `1d`."""
    match = _DURATION.match(text.lower())
    if match is None:
        raise ValueError(f"{text!r} is not a duration (try 30s, 5m, 24h or a number of seconds)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of a duration: `24h`, `5m`, `10s`, `0.5s`."""
    for unit in ("h", "m"):
        if seconds >= _UNIT_SECONDS[unit] and seconds % _UNIT_SECONDS[unit] == 0:
            return f"{seconds / _UNIT_SECONDS[unit]:g}{unit}"
    return f"{seconds:g}s"


def parse_size(text: str) -> int:
    """Bytes from `262144`, `256KiB`, `1MiB` or `512kb`."""
    match = re.match(r"^\s*(\d+)\s*(b|kb|kib|k|mb|mib|m)?\s*$", text.lower())
    if match is None:
        raise ValueError(f"{text!r} is not a size (try 262144, 256KiB or 1MiB)")
    scale = {None: 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024}
    scale |= {"m": 1 << 20, "mb": 1_000_000, "mib": 1 << 20}
    return int(match.group(1)) * scale[match.group(2)]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"{text} must be at least 1")
    return value


# --processes auto, stored as 0: one process per core, up to MAX_AUTO_PROCESSES. More
# rarely pays on one store (SQLite's write turn, PostgreSQL's connections: each
# process opens up to 13); a number above it is taken as given.
AUTO_PROCESSES = 0
MAX_AUTO_PROCESSES = 4


def parse_processes(text: str) -> int:
    """A count of processes, or `auto`."""
    if text.strip().lower() == "auto":
        return AUTO_PROCESSES
    return _positive_int(text)


def available_cores() -> int:
    """The cores this process may use: those its CPU affinity allows (a cpuset), and
    no more than a cgroup v2 CPU quota allows (a container's CPU limit), rounded up."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return cores
    if quota == "max":
        return cores
    return max(1, min(cores, math.ceil(int(quota) / int(period))))


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"{text} must be 0 or more")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError(f"{text} is not a TCP port (0 to 65535; 0 picks a free one)")
    return value


def _data_dir(text: str) -> Path:
    # Empty counts as not given, so an image's MQPY_DATA_DIR can be blanked out when
    # --store names another store.
    return Path(text) if text.strip() else DEFAULT_DATA_DIR


def _log_level(text: str) -> str:
    if text.lower() not in LOG_LEVELS:
        raise ValueError(f"{text!r} is not one of {', '.join(LOG_LEVELS)}")
    return text.lower()


def _log_format(text: str) -> str:
    if text.lower() not in LOG_FORMATS:
        raise ValueError(f"{text!r} is not one of {', '.join(LOG_FORMATS)}")
    return text.lower()


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{text!r} is not true or false")


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise ValueError(f"{text} must be 0 or more")
    return value


def _setting(default: Any, parse: Callable[[str], Any], help: str, *, secret: bool = False) -> Any:
    """A setting; a `secret` one comes only from the environment, never a flag, so it
    does not show in `ps`."""
    return field(default=default, metadata={"parse": parse, "help": help, "secret": secret})


@dataclass(frozen=True)
class Settings:
    """Everything `mqpy serve` can be told."""

    host: str = _setting(
        "127.0.0.1", str, "interface to listen on (loopback unless you mean to expose it)"
    )
    port: int = _setting(8080, _port, "listening port (0 picks a free one)")
    processes: int = _setting(
        AUTO_PROCESSES,
        parse_processes,
        "broker processes to run on this machine, sharing --port and the store (SQLite "
        f"or PostgreSQL); auto: one per core this machine gives it, at most "
        f"{MAX_AUTO_PROCESSES}",
    )
    jobs: int = _setting(
        64,
        _non_negative_int,
        "deliveries claimed from the store and waiting in memory for a worker",
    )
    workers: int = _setting(64, _positive_int, "deliveries in flight at once, to all receivers")
    receiver_concurrency: int = _setting(
        0,
        _non_negative_int,
        "most deliveries one receiver may hold at once; each receiver's share adapts up "
        "to it, growing while it answers quickly and shrinking when it fails or slows "
        "(0: half of --workers, at least 2 when --workers is 3 or more)",
    )
    store: str = _setting(
        "",
        str,
        "where the store lives: a SQLite data directory (a path or sqlite:///abs/path) or "
        "PostgreSQL (a postgresql:// URL or 'host=... dbname=...'; PG* variables fill in "
        "the rest); empty: SQLite in --data-dir",
    )
    data_dir: Path = _setting(  # noqa: RUF009
        DEFAULT_DATA_DIR, _data_dir, "directory of the SQLite store (when --store is empty)"
    )
    delivery_timeout: float = _setting(
        10.0, parse_duration, "how long a receiver may take to answer one delivery"
    )
    lease_seconds: float = _setting(
        30.0,
        parse_duration,
        "how long a claimed delivery stays leased to this node before another node may "
        "take it; at least --delivery-timeout plus 5s",
    )
    retry_base: float = _setting(0.5, parse_duration, "first retry backoff ceiling")
    retry_max: float = _setting(300.0, parse_duration, "longest wait between two attempts")
    max_attempts: int = _setting(
        10, _positive_int, "attempts per delivery, the first included, before dead-lettering"
    )
    max_age: float = _setting(
        86400.0,
        parse_duration,
        "time from publish (a delayed message: from its deliver_at) after which a delivery "
        "is dead-lettered",
    )
    disable_after: float = _setting(
        259200.0,
        parse_duration,
        "disable a push subscription once every attempt to it failed for this long: its "
        "messages wait until it is resumed (a subscription may set its own)",
    )
    max_message_bytes: int = _setting(
        256 * 1024, parse_size, "largest request body accepted (413 above it)"
    )
    max_batch_bytes: int = _setting(
        16 * 1024 * 1024,
        parse_size,
        "largest batch publish body accepted (413 above it); each message's body is "
        "still held to --max-message-bytes",
    )
    dedup_window: float = _setting(
        86400.0, parse_duration, "how long a publish's idempotency key is remembered"
    )
    message_retention: float = _setting(
        86400.0,
        parse_duration,
        "how long a message is kept once done (delivered to every subscription, or taken "
        "by none): readable at GET /v1/messages/{id}, and what seek and start_at can replay",
    )
    shutdown_grace: float = _setting(
        10.0, parse_duration, "on SIGTERM, how long deliveries in flight may take to finish"
    )
    log_level: str = _setting("info", _log_level, f"one of {', '.join(LOG_LEVELS)}")
    log_format: str = _setting(
        "human", _log_format, "log lines for people (human) or one JSON object per line (json)"
    )
    # Security: who may call, what the broker may call, and the limits.
    admin_key: str = _setting("", str, "bootstrap admin API key (environment only)", secret=True)
    allow_unauthenticated: bool = _setting(
        False, parse_bool, "allow a non-loopback --host with no API key configured (unsafe)"
    )
    deny_private_receivers: bool = _setting(
        False, parse_bool, "also refuse receivers on loopback and private addresses"
    )
    verify_receivers: bool = _setting(
        False, parse_bool, "activate a receiver only once it echoes a challenge"
    )
    publish_rate: float = _setting(
        0.0, _non_negative_float, "messages per second one key may publish (0: no limit)"
    )
    publish_burst: float = _setting(
        0.0, _non_negative_float, "messages one key may publish at once (0: one second's worth)"
    )
    max_backlog: int = _setting(
        1_000_000,
        _non_negative_int,
        "undelivered messages held before /send answers 503 (0: no limit)",
    )
    max_connections_per_key: int = _setting(
        1000, _non_negative_int, "connections one key may hold at once (0: no limit)"
    )
    max_header_bytes: int = _setting(
        8190, parse_size, "longest request header name or value accepted"
    )
    max_url_bytes: int = _setting(8190, parse_size, "longest request URL accepted")
    idle_timeout: float = _setting(
        15.0, parse_duration, "close a connection with no complete request in this time"
    )
    body_timeout: float = _setting(
        30.0, parse_duration, "longest a client may take to send a request body"
    )
    secret_overlap: float = _setting(
        86400.0, parse_duration, "how long a rotated-out signing secret still signs"
    )
    tls_cert: str = _setting("", str, "certificate (PEM) to serve HTTPS with")
    tls_key: str = _setting("", str, "private key (PEM) of --tls-cert")
    receiver_ca: str = _setting("", str, "extra CA bundle (PEM) to trust for receivers")

    @property
    def effective_receiver_concurrency(self) -> int:
        """The most one receiver's window may grow to. By default half of --workers
        (and at least 2 when there are 3 or more), so that however slow a receiver is,
        it leaves workers for the others."""
        if self.receiver_concurrency > 0:
            return self.receiver_concurrency
        return max(1, min(2, self.workers - 1), self.workers // 2)

    @property
    def process_count(self) -> int:
        """How many broker processes `--processes` asks for, `auto` resolved."""
        if self.processes != AUTO_PROCESSES:
            return self.processes
        return min(MAX_AUTO_PROCESSES, available_cores())


@dataclass(frozen=True)
class Option:
    """One setting as the command line and the environment see it."""

    name: str
    flag: str
    env: str
    default: Any
    parse: Callable[[str], Any]
    help: str
    secret: bool = False

    @property
    def is_switch(self) -> bool:
        return self.parse is parse_bool


def options() -> list[Option]:
    """Every setting, in declaration order."""
    return [
        Option(
            name=f.name,
            flag="--" + f.name.replace("_", "-"),
            env=ENV_PREFIX + f.name.upper(),
            default=f.default,
            parse=f.metadata["parse"],
            help=f.metadata["help"],
            secret=f.metadata["secret"],
        )
        for f in dataclasses.fields(Settings)
    ]


class SettingError(ValueError):
    """A flag or environment variable has a value that cannot be used."""


def resolve(flags: Mapping[str, str | None], environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from raw flag values (None where not given), then the environment."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for option in options():
        raw, source = (None if option.secret else flags.get(option.name)), option.flag
        if raw is None:
            raw, source = environ.get(option.env), option.env
        if raw is None:
            continue
        try:
            values[option.name] = option.parse(raw)
        except ValueError as exc:
            raise SettingError(f"{source}: {exc}") from None
    return Settings(**values)
