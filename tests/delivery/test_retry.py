"""The retry policy on its own: backoff, when to give up, and the receiver's Retry-After."""

from __future__ import annotations

from email.utils import formatdate

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mqpy.delivery.retry import MAX_RETRY_AFTER_SECONDS, RedeliveryPolicy
from mqpy.wire.retry_after import parse_retry_after

POLICY = RedeliveryPolicy(base=0.5, max_delay=300.0, max_attempts=10, max_age=86400.0)
PUBLISHED = 1_700_000_000.0


def highest() -> float:
    return 1.0


def lowest() -> float:
    return 0.0


# Backoff.


def test_backoff_ceiling_doubles_with_each_attempt() -> None:
    assert [POLICY.backoff(n, rand=highest) for n in range(1, 7)] == [
        0.5,
        1.0,
        2.0,
        4.0,
        8.0,
        16.0,
    ]


def test_full_jitter_can_retry_at_once() -> None:
    assert [POLICY.backoff(n, rand=lowest) for n in range(1, 20)] == [0.0] * 19


def test_jitter_scales_the_ceiling() -> None:
    assert POLICY.backoff(4, rand=lambda: 0.25) == 1.0


def test_backoff_is_capped_at_max_delay() -> None:
    assert POLICY.backoff(10, rand=highest) == 256.0
    assert POLICY.backoff(11, rand=highest) == 300.0
    assert POLICY.backoff(1_000_000, rand=highest) == 300.0


@given(
    attempt=st.integers(min_value=1, max_value=200),
    rand=st.floats(min_value=0.0, max_value=1.0),
    base=st.floats(min_value=0.001, max_value=10.0),
    max_delay=st.floats(min_value=0.001, max_value=3600.0),
)
def test_backoff_stays_within_full_jitter_bounds(
    attempt: int, rand: float, base: float, max_delay: float
) -> None:
    policy = RedeliveryPolicy(base=base, max_delay=max_delay)
    delay = policy.backoff(attempt, rand=lambda: rand)
    assert 0.0 <= delay <= max_delay
    assert delay <= base * 2.0 ** (attempt - 1)


@given(attempt=st.integers(min_value=1, max_value=500))
def test_backoff_ceiling_never_shrinks(attempt: int) -> None:
    assert POLICY.backoff(attempt + 1, rand=highest) >= POLICY.backoff(attempt, rand=highest)


# When to try again.


def test_next_attempt_waits_the_backoff() -> None:
    now = PUBLISHED + 10
    assert POLICY.next_attempt_at(attempt=3, published_at=PUBLISHED, now=now, rand=highest) == (
        now + 2.0
    )


def test_max_attempts_counts_the_first_attempt() -> None:
    policy = RedeliveryPolicy(max_attempts=3)
    due = [
        policy.next_attempt_at(attempt=n, published_at=PUBLISHED, now=PUBLISHED, rand=lowest)
        for n in range(1, 5)
    ]
    # Attempts 1 and 2 failed: try again. Attempt 3 was the last one allowed.
    assert due == [PUBLISHED, PUBLISHED, None, None]


def test_one_attempt_allowed_means_no_retry() -> None:
    policy = RedeliveryPolicy(max_attempts=1)
    assert (
        policy.next_attempt_at(attempt=1, published_at=PUBLISHED, now=PUBLISHED, rand=lowest)
        is None
    )


def test_no_retry_past_max_age_from_publish() -> None:
    policy = RedeliveryPolicy(base=0.5, max_age=60.0)
    almost = PUBLISHED + 59.0
    # Backoff after attempt 3 is up to 2 s: at its ceiling it would land past the age.
    at_ceiling = policy.next_attempt_at(attempt=3, published_at=PUBLISHED, now=almost, rand=highest)
    at_once = policy.next_attempt_at(attempt=3, published_at=PUBLISHED, now=almost, rand=lowest)
    assert (at_ceiling, at_once) == (None, almost)
    too_late = policy.next_attempt_at(
        attempt=1, published_at=PUBLISHED, now=PUBLISHED + 61.0, rand=lowest
    )
    assert too_late is None


def test_retry_after_wins_over_the_backoff() -> None:
    now = PUBLISHED + 1
    longer = POLICY.next_attempt_at(
        attempt=1, published_at=PUBLISHED, now=now, retry_after=7.0, rand=highest
    )
    shorter = POLICY.next_attempt_at(
        attempt=8, published_at=PUBLISHED, now=now, retry_after=1.0, rand=highest
    )
    assert (longer, shorter) == (now + 7.0, now + 1.0)


def test_retry_after_outlasts_max_delay() -> None:
    # The receiver said when it will be back; --retry-max bounds our own guesses only.
    now = PUBLISHED + 1
    brief = RedeliveryPolicy(max_delay=0.5)
    due = brief.next_attempt_at(attempt=1, published_at=PUBLISHED, now=now, retry_after=1.0)
    assert due == now + 1.0
    assert brief.retry_after_wait(1.0) == 1.0


def test_retry_after_is_capped_at_an_hour() -> None:
    now = PUBLISHED + 1
    due = POLICY.next_attempt_at(
        attempt=1, published_at=PUBLISHED, now=now, retry_after=10_000_000.0
    )
    assert due == now + MAX_RETRY_AFTER_SECONDS
    patient = RedeliveryPolicy(max_delay=2 * MAX_RETRY_AFTER_SECONDS)
    assert patient.retry_after_wait(10_000_000.0) == 2 * MAX_RETRY_AFTER_SECONDS
    assert POLICY.retry_after_wait(None) is None


def test_retry_after_cannot_outlast_the_retry_budget() -> None:
    assert (
        POLICY.next_attempt_at(attempt=10, published_at=PUBLISHED, now=PUBLISHED, retry_after=1.0)
        is None
    )
    short_lived = RedeliveryPolicy(max_age=60.0)
    assert (
        short_lived.next_attempt_at(
            attempt=1, published_at=PUBLISHED, now=PUBLISHED + 50, retry_after=20.0
        )
        is None
    )


@given(
    attempt=st.integers(min_value=1, max_value=20),
    elapsed=st.floats(min_value=0.0, max_value=200_000.0),
    rand=st.floats(min_value=0.0, max_value=1.0),
    retry_after=st.none() | st.floats(min_value=0.0, max_value=1e9),
)
def test_next_attempt_is_soon_enough_and_within_budget(
    attempt: int, elapsed: float, rand: float, retry_after: float | None
) -> None:
    now = PUBLISHED + elapsed
    due = POLICY.next_attempt_at(
        attempt=attempt, published_at=PUBLISHED, now=now, retry_after=retry_after, rand=lambda: rand
    )
    if attempt >= POLICY.max_attempts or now - PUBLISHED > POLICY.max_age:
        assert due is None
    if due is not None:
        longest = POLICY.max_delay if retry_after is None else MAX_RETRY_AFTER_SECONDS
        assert now <= due <= now + longest
        assert due - PUBLISHED <= POLICY.max_age


# Retry-After.

NOW = 1_445_412_480.0  # Wed, 21 Oct 2015 07:28:00 GMT


@pytest.mark.parametrize(("header", "seconds"), [("120", 120.0), (" 5 ", 5.0), ("0", 0.0)])
def test_retry_after_in_seconds(header: str, seconds: float) -> None:
    assert parse_retry_after(header, NOW) == seconds


def test_retry_after_as_an_http_date() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", NOW) == 30.0
    assert parse_retry_after(formatdate(NOW + 90, usegmt=True), NOW) == 90.0


def test_retry_after_date_in_the_past_means_now() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", NOW) == 0.0


@pytest.mark.parametrize(
    "header",
    [None, "", "soon", "-5", "1.5", "0x10", "Wed, 32 Oct 2015 07:28:00 GMT", "7 days"],
)
def test_retry_after_garbage_is_ignored(header: str | None) -> None:
    assert parse_retry_after(header, NOW) is None


@given(st.integers(min_value=0, max_value=10**9))
def test_any_delta_seconds_parses(seconds: int) -> None:
    assert parse_retry_after(str(seconds), NOW) == float(seconds)


@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126)))
def test_any_ascii_header_is_parsed_or_ignored_never_raises(header: str) -> None:
    seconds = parse_retry_after(header, NOW)
    assert seconds is None or seconds >= 0.0


@pytest.mark.parametrize("header", ["²", "³", "١٢"])
def test_non_ascii_digits_are_ignored(header: str) -> None:
    assert parse_retry_after(header, NOW) is None
