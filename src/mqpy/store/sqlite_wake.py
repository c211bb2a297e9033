"""Wake-ups between the processes of a `--processes N` group on one SQLite file.

PostgreSQL nodes tell each other of new work with LISTEN/NOTIFY; SQLite has nothing
like it, so without this a process found what another had published by polling, up to
a second later: a pull consumer or `mqpy listen` whose connection the kernel gave to the
other process waited that long for each quiet moment's first message.

Each process of the group binds a Unix datagram socket in Linux's abstract namespace
(no file to clean up; it goes when the process does), named after the data directory's
lock file and the process's slot (`MQPY_PROCESS_SLOT`), so the processes find each
other without a registry: the peers of slot 2 of 3 are slots 1 and 3. After a commit
that made deliveries due (publishes) or changed connections, subscriptions or keys, a
process sends one byte to each peer: `d` or `c`. A datagram that cannot go (a peer
restarting, its queue full of wake-ups it has not read yet) is dropped: a wake-up is a
hint, and every process still polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable

log = logging.getLogger("mqpy.store")

DUE = b"d"
CATALOG = b"c"
# Wake-ups read at once at most; more waiting says nothing the first did not.
_READ_AT_ONCE = 256


class GroupWake:
    """This process's wake-up socket, and its peers' names."""

    def __init__(self, lock_descriptor: int, slot: int, count: int) -> None:
        found = os.fstat(lock_descriptor)
        # The lock file's identity names the group: one group holds it at a time.
        prefix = f"\0mqpy-wake-{found.st_dev:x}-{found.st_ino:x}-"
        self._peers = [f"{prefix}{n}" for n in range(1, count + 1) if n != slot]
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.setblocking(False)
        try:
            self._socket.bind(f"{prefix}{slot}")
        except OSError:
            self._socket.close()
            raise
        self._reading = False

    def start(self, on_due: Callable[[], None], on_catalog: Callable[[], None]) -> None:
        """Call `on_due` and `on_catalog` as peers' wake-ups arrive (in this loop)."""
        self._on_due = on_due
        self._on_catalog = on_catalog
        asyncio.get_running_loop().add_reader(self._socket.fileno(), self._read)
        self._reading = True

    def tell(self, what: bytes) -> None:
        """Wake every peer; callable from any thread (the store's writer tells after
        its commits)."""
        for peer in self._peers:
            # Refused: the peer is between lives; full: it has wake-ups to read anyway.
            with contextlib.suppress(OSError):
                self._socket.sendto(what, peer)

    def close(self) -> None:
        if self._reading:
            with contextlib.suppress(RuntimeError):  # the loop may be closed already
                asyncio.get_running_loop().remove_reader(self._socket.fileno())
            self._reading = False
        self._socket.close()

    def _read(self) -> None:
        heard = b""
        for _ in range(_READ_AT_ONCE):
            try:
                heard += self._socket.recv(16)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                log.warning("reading wake-ups from the other processes failed: %s", exc)
                break
        if CATALOG in heard:
            self._on_catalog()
        if DUE in heard or CATALOG in heard:
            self._on_due()


def group_wake(lock_descriptor: int, slot: int, count: int) -> GroupWake | None:
    """This process's wake-ups, or None (polling only) where the socket cannot be made,
    such as off Linux, which has no abstract socket names."""
    try:
        return GroupWake(lock_descriptor, slot, count)
    except OSError as exc:
        log.warning(
            "cannot make a wake-up socket for the other processes (%s): they will find "
            "new work by polling, within a second",
            exc,
        )
        return None
