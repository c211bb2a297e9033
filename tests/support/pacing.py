"""Checking a receiver's arrivals against a token bucket (max_per_second)."""

from __future__ import annotations


def starts_too_early(times: list[float], rate: float, burst: int, slack: float) -> list[str]:
    """Arrivals that came sooner than a bucket of `burst` tokens refilled at `rate`
    allows: the k-th (0-based) needs k + 1 tokens, so it may not come before
    (k + 1 - burst) / rate seconds after the first (less `slack`)."""
    first = times[0]
    return [
        f"#{k} at {at - first:.3f} s (not before {(k + 1 - burst) / rate:.3f} s)"
        for k, at in enumerate(times)
        if at - first < (k + 1 - burst) / rate - slack
    ]
