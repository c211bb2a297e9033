"""Identifiers handed to clients.

Connection ids are random (the seed's sequential ids were guessable) and stay below
2**53 so JavaScript clients read them exactly. Message ids sort by time, which keeps
store indexes append-mostly and makes logs easy to follow.
"""

from __future__ import annotations

import os
import random
import secrets
import socket
import time

MAX_CONNECTION_ID = 2**53 - 1


def new_connection_id() -> int:
    """A random positive integer below 2**53; the store checks it was never issued."""
    return secrets.randbelow(MAX_CONNECTION_ID) + 1


def new_message_ids(count: int) -> list[str]:
    """`count` message ids, each `msg_` followed by 12 hex digits of milliseconds and 20
    random hex digits.

    An id must be unique, not secret (reading a message takes a key that allows its
    topic), so the digits come from the process's pseudo-random generator, seeded from
    the system's random source at start and again in a forked child. Reading the system's
    source instead is a system call that gives up the GIL on the event loop's thread; on
    the publish path the loop then waited for the store's writer thread to give it back,
    about 5 µs a publish."""
    prefix = f"msg_{time.time_ns() // 1_000_000:012x}"
    digits = f"{random.getrandbits(80 * count):0{20 * count}x}"
    return [prefix + digits[20 * n : 20 * n + 20] for n in range(count)]


def new_lease_token() -> str:
    """An unguessable token naming one claim of deliveries."""
    return secrets.token_hex(12)


def node_name() -> str:
    """This process's name in leases and the node list: host, pid and a random tag
    (a pid is reused after a restart; the tag tells the two lives apart)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
