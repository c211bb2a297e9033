"""What a `--processes` group keeps together in memory: token buckets and receivers'
pauses, in one small file every process of the group maps (`mmap`).

A group always lives on one machine (the supervisor's children), so shared memory is
where its processes meet; separate nodes sharing a PostgreSQL store keep these limits
each on its own. The supervisor makes the file and names it in the environment
(`MQPY_GROUP_STATE`); each child opens it (`GroupState.joined`).

The file is a header and a fixed table of slots. A slot belongs to a hash of (kind,
key) and is found by probing a few slots from the hash's own. One lock guards the
whole table (`fcntl.lockf` on its first byte): an operation holds it for a few
microseconds, and a lock per slot would need the probe to take several. A slot whose
`free_after` has passed carries nothing a fresh one would not (a bucket that refilled,
a pause long over) and is taken over by the next key that needs one. When every slot
probed is in use, an operation answers None and the caller keeps its limit alone, as
a process outside a group does: a full table degrades, it never refuses.

The times in the file are `time.monotonic()`, one clock for every process of a
machine; callers pass their own clock's `now` and get durations back.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import math
import mmap
import os
import struct
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

# The environment variable naming the group's file, set by the supervisor.
ENV = "MQPY_GROUP_STATE"
# The file's name: this, the supervisor's pid, "-", a random tail.
PREFIX = "mqpy-group-"
SLOTS = 4096  # 256 KiB: a bucket per publishing key and receiver of a busy broker
PROBES = 16
# The header: a version, moved by every change to a receiver's pause, so a process
# can tell without the lock that nothing it read of the pauses has changed; then
# whether a process of the group has made an API key (1) or not yet (0).
_HEADER = struct.Struct("<Q")
_KEYS_MADE = struct.Struct("<Q")
_KEYS_MADE_AT = 8
_HEADER_BYTES = 64
# A slot: the key's hash (0: never used), free_after, four values and a process id.
_SLOT = struct.Struct("<Qd4dq")
_SLOT_BYTES = 64
# A pause stays in the table this long past its end while no probe settles it.
PAUSE_KEPT_SECONDS = 3600.0

T = TypeVar("T")


@dataclass(slots=True)
class Record:
    """A slot's values, as a kind of state uses them."""

    free_after: float = 0.0
    a: float = 0.0
    b: float = 0.0
    c: float = 0.0
    d: float = 0.0
    owner: int = 0


@dataclass(frozen=True, slots=True)
class SharedPause:
    """A receiver's pause as the group knows it: how many pauses in a row, until when
    (monotonic seconds), and which process holds its probe until when (0: none)."""

    pauses: int
    until: float
    probe_owner: int
    probe_until: float


NOT_PAUSED = SharedPause(0, -math.inf, 0, 0.0)


class GroupState:
    """One process's view of its group's shared table."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._file = open(path, "r+b")  # noqa: SIM115 (open for the process's life)
        self._fd = self._file.fileno()
        self._map = mmap.mmap(self._fd, 0)
        self._slots = (len(self._map) - _HEADER_BYTES) // _SLOT_BYTES
        self.pid = os.getpid()

    @staticmethod
    def create(directory: str | None = None, slots: int = SLOTS) -> Path:
        """Make a group's file, zeroed, in `directory` (by default memory-backed
        /dev/shm where there is one); the caller removes it once the group is gone."""
        fd, name = tempfile.mkstemp(prefix=f"{PREFIX}{os.getpid()}-", dir=directory or _where())
        try:
            os.ftruncate(fd, _HEADER_BYTES + slots * _SLOT_BYTES)
        finally:
            os.close(fd)
        return Path(name)

    @classmethod
    def joined(cls, environ: Mapping[str, str] | None = None) -> GroupState | None:
        """The table of the group this process belongs to, or None outside a group."""
        path = (os.environ if environ is None else environ).get(ENV, "")
        return cls(path) if path else None

    def close(self) -> None:
        self._map.close()
        self._file.close()

    # Token buckets

    def acquire(
        self, kind: str, key: str, rate: float, burst: float, cost: float, extra: float = 0.0
    ) -> tuple[float, float] | None:
        """Take `cost` tokens from a bucket refilling at `rate` up to `burst`, and up
        to `extra` more if it holds them: (0, the extra taken) if taken, else (the
        seconds until they would be, 0); None if the table is full."""

        def take(record: Record, now: float) -> tuple[float, float]:
            tokens = _refilled(record, now, rate, burst)
            if tokens < cost:
                _store_bucket(record, now, tokens, rate, burst)
                return (cost - tokens) / rate, 0.0
            more = min(extra, tokens - cost)
            _store_bucket(record, now, tokens - cost - more, rate, burst)
            return 0.0, more

        return self._update(kind, key, take)

    def level(self, kind: str, key: str, rate: float, capacity: float, take: float) -> float | None:
        """Take `take` tokens from a bucket even if that leaves it in debt, and say
        how many it holds then (a receiver's pace: claims that ran ahead are paid
        for by waiting); None if the table is full."""

        def taken(record: Record, now: float) -> float:
            tokens = min(capacity, _refilled(record, now, rate, capacity) - take)
            _store_bucket(record, now, tokens, rate, capacity)
            return tokens

        return self._update(kind, key, taken)

    def reserve(self, kind: str, key: str, rate: float, capacity: float, wanted: int) -> int | None:
        """Take up to `wanted` whole tokens from a bucket, as many as it holds; how
        many were taken (None if the table is full). Unused ones go back with `level`
        and a negative `take`."""

        def reserved(record: Record, now: float) -> int:
            tokens = _refilled(record, now, rate, capacity)
            granted = max(0, min(wanted, math.floor(tokens)))
            _store_bucket(record, now, tokens - granted, rate, capacity)
            return granted

        return self._update(kind, key, reserved)

    # API keys

    def note_key_made(self) -> None:
        """A process of the group stored an API key: authentication is on for all of
        them. Never cleared: keys once required stay required (auth/access.py)."""
        _KEYS_MADE.pack_into(self._map, _KEYS_MADE_AT, 1)

    def key_made(self) -> bool:
        """Whether a process of the group has stored an API key; read without the
        lock (one aligned word, written once)."""
        return bool(_KEYS_MADE.unpack_from(self._map, _KEYS_MADE_AT)[0])

    # Receivers' pauses: a = until, b = pauses, c = probe until, owner = probe's process

    def version(self) -> int:
        """Moves with every change to a pause; read without the lock (a torn read
        only costs the reader a fresh look)."""
        return int(_HEADER.unpack_from(self._map, 0)[0])

    def pause_of(self, key: str) -> SharedPause | None:
        """The receiver's pause as the group knows it; None if the table is full."""
        return self._update("pause", key, _pause_view)

    def pause(self, key: str, until: float, pauses: int) -> SharedPause | None:
        """Pause the receiver for the group until `until` (monotonic), counting
        `pauses` in a row; a probe this process held is given back."""

        def paused(record: Record, now: float) -> SharedPause:
            record.a = max(record.a, until) if record.b else until
            record.b = max(record.b, float(pauses))
            if record.owner == self.pid:
                record.owner, record.c = 0, 0.0
            _keep_pause(record)
            return _pause_view(record, now)

        return self._changing_pause(key, paused)

    def claim_probe(self, key: str, seconds: float) -> bool:
        """Whether this process may send the paused receiver's probe now: its pause is
        over and no other live process holds the probe. The probe is held for
        `seconds`, or until this process gives it back."""

        def claim(record: Record, now: float) -> bool:
            if not record.b or now < record.a:
                return False
            if record.owner not in (0, self.pid) and now < record.c and process_alive(record.owner):
                return False
            record.owner, record.c = self.pid, now + seconds
            _keep_pause(record)
            return True

        return bool(self._changing_pause(key, claim))

    def release_probe(self, key: str) -> None:
        """Give back the probe this process claimed and did not send."""

        def release(record: Record, now: float) -> None:
            if record.owner == self.pid:
                record.owner, record.c = 0, 0.0

        self._changing_pause(key, release)

    def resume(self, key: str) -> None:
        """The receiver answered: the group's pause of it is over."""

        def clear(record: Record, now: float) -> None:
            record.free_after = record.a = record.b = record.c = 0.0
            record.owner = 0

        self._changing_pause(key, clear)

    # The table

    def _changing_pause(self, key: str, change: Callable[[Record, float], T]) -> T | None:
        def bumped(record: Record, now: float) -> T:
            result = change(record, now)
            version = _HEADER.unpack_from(self._map, 0)[0]
            _HEADER.pack_into(self._map, 0, (version + 1) & 0xFFFF_FFFF_FFFF_FFFF)
            return result

        return self._update("pause", key, bumped)

    def _update(self, kind: str, key: str, change: Callable[[Record, float], T]) -> T | None:
        """Run `change` on the key's record (a fresh one if it has none) under the
        table's lock and write it back; None if no slot is free for it."""
        wanted = _hash(kind, key)
        with self._locked():
            now = time.monotonic()
            offset = self._find(wanted, now)
            if offset is None:
                return None
            hashed, free_after, a, b, c, d, owner = _SLOT.unpack_from(self._map, offset)
            record = (
                Record(free_after, a, b, c, d, owner)
                if hashed == wanted and free_after > now
                else Record()
            )
            result = change(record, now)
            _SLOT.pack_into(
                self._map,
                offset,
                wanted,
                record.free_after,
                record.a,
                record.b,
                record.c,
                record.d,
                record.owner,
            )
            return result

    def _find(self, wanted: int, now: float) -> int | None:
        """The offset of the key's slot, else of the first one free among the probed."""
        free: int | None = None
        start = wanted % self._slots
        for step in range(PROBES):
            offset = _HEADER_BYTES + ((start + step) % self._slots) * _SLOT_BYTES
            hashed, free_after = struct.unpack_from("<Qd", self._map, offset)
            if hashed == wanted:
                return offset
            if free is None and (hashed == 0 or free_after <= now):
                free = offset
        return free

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fcntl.lockf(self._fd, fcntl.LOCK_EX, 1, 0)
        try:
            yield
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, 0)


def remove_orphans(directory: str | None = None) -> None:
    """Remove the files of groups whose supervisor is gone: one killed (SIGKILL)
    could not remove its own. A file is named after its supervisor's pid."""
    for path in Path(directory or _where()).glob(f"{PREFIX}*-*"):
        pid = path.name[len(PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not process_alive(int(pid)):
            path.unlink(missing_ok=True)


def _where() -> str:
    """Memory-backed where Linux has it: nothing of the table need reach a disk."""
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


def process_alive(pid: int) -> bool:
    """Whether process `pid` is running (as far as this process can tell)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _hash(kind: str, key: str) -> int:
    digest = hashlib.blake2b(f"{kind}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1  # 0 marks a slot never used


# A bucket: a = tokens, b = when they were counted.


def _refilled(record: Record, now: float, rate: float, capacity: float) -> float:
    if not record.free_after:  # fresh: a full bucket
        return capacity
    return min(capacity, record.a + (now - record.b) * rate)


def _store_bucket(record: Record, now: float, tokens: float, rate: float, capacity: float) -> None:
    record.a, record.b = tokens, now
    # Full again then, and no different from a fresh one.
    record.free_after = now + max(0.0, capacity - tokens) / rate + 1e-9


def _keep_pause(record: Record) -> None:
    record.free_after = max(record.a, record.c) + PAUSE_KEPT_SECONDS


def _pause_view(record: Record, now: float) -> SharedPause:
    if not record.b:
        return NOT_PAUSED
    return SharedPause(int(record.b), record.a, record.owner, record.c)
