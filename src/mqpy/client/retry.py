"""When the client sends a request again, and after how long: pure functions, no I/O.

Two kinds of failure are retried:
- **429 and 503**, for every call. The broker answers them before it stores anything
  (rate limit, full backlog, store unavailable), so a retry cannot publish twice. The
  wait is the answer's `Retry-After`; one longer than `max_wait` is not waited for, the
  error goes to the caller at once.
- **No answer** (`ConnectionFailed`). If the request never left (refused connection,
  DNS failure) any call is retried: the server did nothing. If it left and the answer
  was lost, only idempotent calls are retried. `/connect` and `/send` are not: the
  server may have acted, and a retry would make a second connection or publish the
  message twice.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from mqpy.client.errors import ConnectionFailed, MQError, RateLimited, Unavailable

DEFAULT_RETRIES = 3
DEFAULT_MAX_WAIT = 30.0  # seconds; a longer Retry-After is the caller's decision
BACKOFF_BASE = 0.2  # seconds; the ceiling of the first wait without a Retry-After


@dataclass(frozen=True)
class RetryPolicy:
    """`retries` further attempts at most, none waiting longer than `max_wait` seconds."""

    retries: int = DEFAULT_RETRIES
    max_wait: float = DEFAULT_MAX_WAIT

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be 0 or more, not {self.retries}")
        if self.max_wait < 0:
            raise ValueError(f"max_retry_wait must be 0 or more, not {self.max_wait}")

    def delay(self, retry: int, error: MQError, idempotent: bool) -> float | None:
        """Seconds to wait before retry number `retry` (1-based), or None: give up."""
        if retry > self.retries:
            return None
        if isinstance(error, RateLimited | Unavailable):
            wait = error.retry_after if error.retry_after is not None else backoff(retry)
            return wait if wait <= self.max_wait else None
        if isinstance(error, ConnectionFailed) and (idempotent or not error.request_sent):
            return min(backoff(retry), self.max_wait)
        return None


def backoff(retry: int) -> float:
    """Full jitter: uniform in [0, base * 2^(retry-1)], so clients that failed together
    do not come back together."""
    return random.uniform(0, BACKOFF_BASE * 2 ** (retry - 1))
